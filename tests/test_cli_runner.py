"""Every command through click's CliRunner: its help, and one-line errors for bad option values.

No command runs a step here: bad values stop in click's parsing, and the tests of the entry
point replace the step's set-up. The group itself (--version, -v) is tested in test_cli.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from medtune import cli
from medtune.errors import ConfigError

COMMANDS = ["split", "search", "optuna", "bayesian", "train", "evaluate", "predict", "app", "main"]


def invoke(*args: str):
    return CliRunner().invoke(cli.cli, list(args), prog_name="medtune")


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_every_command_is_listed_in_the_group_help():
    result = invoke("--help")
    assert result.exit_code == 0
    assert sorted(cli.cli.commands) == sorted(COMMANDS)
    for name in COMMANDS:
        assert f"  {name} " in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_its_summary_and_options(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: medtune {command} [OPTIONS]")
    summary = cli.cli.commands[command].help.splitlines()[0]
    assert " ".join(summary.split()[:4]) in " ".join(result.output.split())
    assert "-v, --verbose" in result.output and "-h, --help" in result.output


def test_help_imports_neither_tensorflow_nor_mlflow():
    code = (
        "import sys; from click.testing import CliRunner; from medtune.cli import cli; "
        "[CliRunner().invoke(cli, [c, '--help']) for c in ('search', 'train', 'main')]; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["split", "--seed", "abc"], "'--seed': 'abc' is not a valid integer"),
        (["split", "--val-fraction", "half"], "'--val-fraction': 'half' is not a valid float"),
        (["search", "--engine", "nope"], "'--engine': 'nope' is not one of 'optuna'"),
        (["search", "--pruner", "bogus"], "'--pruner': 'bogus' is not one of 'median'"),
        (["search", "--trials", "many"], "'--trials': 'many' is not a valid integer"),
        (["optuna", "--objective", "speed"], "'--objective': 'speed' is not one of"),
        (["bayesian", "--class-weights", "maybe"], "'--class-weights': 'maybe' is not a valid boolean"),
        (["train", "--epochs", "ten"], "'--epochs': 'ten' is not a valid integer"),
        (["train", "--margin", "big"], "'--margin': 'big' is not a valid float"),
        (["evaluate"], "Missing option '--model-uri'"),
        (["predict", "--model", "models:/m@champion", "/no/such/image.png"], "'INPUTS...': Path '/no/such/image.png'"),
        (["app", "--port", "http"], "'--port': 'http' is not a valid integer"),
        (["main", "--search-epochs", "-"], "'--search-epochs': '-' is not a valid integer"),
        (["split", "--no-such-option"], "No such option '--no-such-option'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_a_bad_value_is_one_error_line_naming_the_parameter(args, named):
    result = invoke(*args)
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert named in line
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["search", "train", "main"])
def test_auto_is_accepted_where_the_machine_sizes_the_default(monkeypatch, command):
    def stop(verbose, tracking_uri=None):
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_setup", stop)
    result = invoke(command, "--epochs", "auto", "--image-size", "AUTO")
    assert result.exit_code == 0, result.output


def run_entry_point(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``medtune ARGS`` through the console-script function: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["medtune", *args])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    return stopped.value.code, capsys.readouterr().err


def test_the_entry_point_prints_a_usage_error_in_one_line(monkeypatch, capsys):
    code, err = run_entry_point(monkeypatch, capsys, "split", "--seed", "abc")
    assert code == 2
    assert error_lines(err) == ["Error: Invalid value for '--seed': 'abc' is not a valid integer."]


def test_the_entry_point_prints_a_medtune_error_in_one_line(monkeypatch, capsys):
    def refuse(verbose, tracking_uri=None):
        raise ConfigError("space=nowhere.yaml: no such file\nsecond line")

    monkeypatch.setattr(cli, "_setup", refuse)
    code, err = run_entry_point(monkeypatch, capsys, "search", "--space", "nowhere.yaml")
    assert code == 2
    assert err.splitlines()[0] == "medtune: error: space=nowhere.yaml: no such file"
    assert "Traceback" not in err


def test_the_entry_point_prints_an_mlflow_error_in_one_line(monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    def unreachable(verbose, tracking_uri=None):
        raise MlflowException("API request to   http://nowhere failed\n with much detail")

    monkeypatch.setattr(cli, "_setup", unreachable)
    code, err = run_entry_point(monkeypatch, capsys, "split")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("medtune: error: MLflow (") and line.endswith(
        "API request to http://nowhere failed with much detail"
    )


def test_an_interrupt_exits_130_without_a_traceback(monkeypatch, capsys):
    def interrupted(verbose, tracking_uri=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_setup", interrupted)
    code, err = run_entry_point(monkeypatch, capsys, "train")
    assert code == 130
    assert "medtune: interrupted" in err and "Traceback" not in err
