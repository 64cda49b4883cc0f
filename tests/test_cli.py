"""The click group itself: --version, -v on either side of the command, a missing TensorFlow."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from medtune import __version__, cli


def test_version():
    result = CliRunner().invoke(cli.cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"medtune, version {__version__}"


@pytest.mark.parametrize("args", [["-v", "split"], ["split", "-v"], ["split", "--seed", "1", "--verbose"]])
def test_verbose_is_accepted_before_and_after_the_command(monkeypatch, args):
    seen = []

    def fake_setup(verbose, tracking_uri=None):
        seen.append(verbose)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_setup", fake_setup)
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 0, result.output
    assert seen == [True]


def test_without_verbose_the_log_is_not_debug(monkeypatch):
    seen = []

    def fake_setup(verbose, tracking_uri=None):
        seen.append(verbose)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_setup", fake_setup)
    CliRunner().invoke(cli.cli, ["split"])
    assert seen == [False]


def test_missing_tensorflow_is_one_line_naming_the_extras(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(cli.MedtuneError, match=r"pip install 'medtune\[cpu\]' \(CPU\) or 'medtune\[gpu\]'"):
        cli._require_tensorflow()
