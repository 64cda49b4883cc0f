"""One set of defaults: every option is declared once (medtune.options); the click options and the
steps' option dataclasses are built from the declarations, and MLproject's parameters are checked
against them here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest
import yaml

from medtune import cli
from medtune.hpo.base import PRUNERS
from medtune.hpo.engines import ENGINE_ALIASES, ENGINES
from medtune.hpo.trial import OBJECTIVES
from medtune.steps.pipeline import PipelineOptions
from medtune.steps.search import SearchOptions
from medtune.steps.split import SplitOptions
from medtune.steps.train import TrainOptions

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
DATACLASSES = {
    "main": PipelineOptions,
    "split": SplitOptions,
    "search": SearchOptions,
    "optuna": SearchOptions,
    "bayesian": SearchOptions,
    "train": TrainOptions,
}


def _options(command: str) -> dict[str, click.Option]:
    return {p.name: p for p in cli.cli.commands[command].params if isinstance(p, click.Option) and p.name}


def _as_value(option: click.Option, raw):
    """What the command receives for ``raw`` (the MLproject's string or the click default)."""
    value = option.type.convert(raw, option, None) if raw is not None else None
    if option.callback is not None and option.name not in ("engine",):
        value = option.callback(None, option, value)
    return value


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_mlproject_defaults_are_the_click_defaults(entry):
    spec = ENTRY_POINTS[entry]
    options = _options(entry)
    command = " ".join(spec["command"].split())
    for name, param in spec["parameters"].items():
        assert name in options, f"{entry}: MLproject parameter {name} is no option of `medtune {entry}`"
        assert f"--{name.replace('_', '-')} {{{name}}}" in command, f"{entry}: {name} is not passed on"
        if "default" not in param:
            continue
        option = options[name]
        assert _as_value(option, str(param["default"])) == _as_value(option, option.default), (
            f"{entry}.{name}: MLproject default {param['default']!r}, click default {option.default!r}"
        )
    passed = set(re.findall(r"--([a-z-]+) \{", command))
    assert passed == {n.replace("_", "-") for n in spec["parameters"]}


@pytest.mark.parametrize("command", sorted(DATACLASSES))
def test_click_defaults_are_the_dataclass_defaults(command):
    fields = {
        f.name: f.default for f in dataclasses.fields(DATACLASSES[command]) if f.default is not dataclasses.MISSING
    }
    aliases = {"search_epochs": "search_epochs", "search_image_size": "search_image_size"}
    checked = 0
    for name, option in _options(command).items():
        name = aliases.get(name, name)
        if name not in fields:
            continue
        value = _as_value(option, option.default)
        if name == "timeout":  # 0 on the command line is "no limit", None in the dataclass
            value = value or None
        if name == "split_run":  # "latest" on the command line
            value = None if value == "latest" else value
        assert value == fields[name], f"{command} --{name}: click gives {value!r}, the dataclass {fields[name]!r}"
        checked += 1
    assert checked >= 4


def test_search_and_main_offer_the_same_search_options():
    search, main = _options("search"), _options("main")
    renamed = {"epochs": "search_epochs", "image_size": "search_image_size"}
    for name in (
        "engine",
        "space",
        "trials",
        "objective",
        "pruner",
        "class_weights",
        "timeout",
        "study",
        "storage",
        "weights",
        "seed",
        "epochs",
        "image_size",
    ):
        a, b = search[name], main[renamed.get(name, name)]
        assert (a.default, getattr(a.type, "choices", None)) == (b.default, getattr(b.type, "choices", None)), name


def test_choices_come_from_the_engines():
    search = _options("search")
    assert list(search["engine"].type.choices) == [*ENGINES, *ENGINE_ALIASES]
    assert list(search["pruner"].type.inner.choices) == list(PRUNERS)
    assert list(search["objective"].type.choices) == list(OBJECTIVES)
    assert (
        "keras_hyperband" in ENGINES and "hyperband" in PRUNERS and ENGINE_ALIASES == {"hyperband": "keras_hyperband"}
    )


def test_bayesian_shortcut_offers_no_optuna_only_options():
    assert not {"pruner", "storage", "timeout"} & set(_options("bayesian"))
    assert not {"pruner", "storage", "timeout"} & set(ENTRY_POINTS["bayesian"]["parameters"])


@pytest.mark.parametrize("command", sorted(DATACLASSES))
def test_no_option_dataclass_has_a_default_of_its_own(command):
    """Each field a user can set takes its default from a declaration (no literal copy to drift)."""
    import inspect

    from medtune.options import OPTIONS

    source = inspect.getsource(DATACLASSES[command])
    internal = {"register", "replan"}  # set by main, never by a user
    for f in dataclasses.fields(DATACLASSES[command]):
        if f.name in internal or f.default is dataclasses.MISSING:
            continue
        assert re.search(rf"^    {f.name}: .* = default\(\"[a-z_.]+\"\)$", source, re.M), f"{command}.{f.name}"
    assert {"seed", "dataset", "budget", "train.epochs", "search.epochs"} <= set(OPTIONS)
