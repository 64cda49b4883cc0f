"""Search-space parsing and validation (no TensorFlow needed except the defaults check)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from medtune import space as space_mod
from medtune.errors import SpaceError
from medtune.space import Param, SearchSpace, load_space, parse_space, resolve_space_path

REPO = Path(__file__).resolve().parents[1]
CNN_YAML = REPO / "search_spaces" / "cnn.yaml"


@pytest.fixture(scope="module")
def cnn() -> SearchSpace:
    return load_space(CNN_YAML)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- the real file


def test_cnn_yaml_declares_every_parameter_in_order(cnn):
    assert cnn.names() == [
        "num_blocks", "filters", "kernel_size", "conv_type", "residual", "batch_norm",
        "dropout", "l2", "dense_units", "optimizer", "momentum", "learning_rate",
        "batch_size", "label_smoothing", "augment",
    ]  # fmt: skip
    assert cnn.source == str(CNN_YAML)
    assert cnn.description
    assert all(p.help for p in cnn)


def test_cnn_yaml_types_ranges_and_conditions(cnn):
    assert cnn["num_blocks"] == Param("num_blocks", "int", 2, 4, default=3, help=cnn["num_blocks"].help)
    assert cnn["filters"].choices == (32, 64, 128, 256)
    assert cnn["l2"].log and cnn["l2"].low == pytest.approx(1e-6) and cnn["l2"].step is None
    assert cnn["dropout"].step == pytest.approx(0.1)
    assert cnn["dense_units"].step == 128
    assert cnn["residual"].type == "bool"
    assert cnn["learning_rate"].choices == (1e-3, 5e-4, 1e-4)
    assert all(isinstance(c, float) for c in cnn["label_smoothing"].choices)
    assert cnn["momentum"].condition == {"optimizer": ("sgd",)}
    assert cnn["momentum"].parent == "optimizer" and cnn["momentum"].parent_values == ("sgd",)
    assert cnn["optimizer"].parent is None


def test_cnn_yaml_defaults_match_the_model_defaults(cnn):
    from medtune.models.cnn import DEFAULTS

    defaults = cnn.defaults()
    for name, value in DEFAULTS.items():
        if name in defaults:
            assert defaults[name] == value, name


def test_defaults_omit_inactive_params(cnn):
    defaults = cnn.defaults()
    assert defaults["optimizer"] == "adam"
    assert "momentum" not in defaults
    assert set(defaults) == set(cnn.names()) - {"momentum"}


def test_params_are_hashable_and_space_pickles(cnn):
    import pickle

    assert len({p for p in cnn}) == len(cnn)
    assert pickle.loads(pickle.dumps(cnn)) == cnn


# --------------------------------------------------------------------------- validation errors

VALID = {"a": {"type": "categorical", "choices": ["x", "y"]}}

BAD_PARAMS = [
    ("unknown_type", {"p": {"type": "string"}}, "params.p.type"),
    ("unknown_key", {"p": {"type": "int", "low": 1, "high": 2, "lo": 0}}, "params.p.lo"),
    ("key_not_for_type", {"p": {"type": "bool", "low": 0}}, "params.p.low"),
    ("low_equals_high", {"p": {"type": "int", "low": 2, "high": 2}}, "params.p.low"),
    ("low_above_high", {"p": {"type": "float", "low": 1.0, "high": 0.5}}, "params.p.low"),
    ("missing_high", {"p": {"type": "float", "low": 0.0}}, "params.p.high"),
    ("non_numeric_low", {"p": {"type": "float", "low": "a", "high": 1.0}}, "params.p.low"),
    ("int_with_fraction", {"p": {"type": "int", "low": 0.5, "high": 3}}, "params.p.low"),
    ("log_with_zero_low", {"p": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "params.p.log"),
    ("step_with_log", {"p": {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}}, "params.p.step"),
    ("negative_step", {"p": {"type": "int", "low": 0, "high": 4, "step": -1}}, "params.p.step"),
    ("step_not_dividing", {"p": {"type": "int", "low": 0, "high": 5, "step": 2}}, "params.p.step"),
    ("empty_choices", {"p": {"type": "categorical", "choices": []}}, "params.p.choices"),
    ("missing_choices", {"p": {"type": "categorical"}}, "params.p.choices"),
    ("mixed_choices", {"p": {"type": "categorical", "choices": [1, "a"]}}, "params.p.choices"),
    ("duplicate_choices", {"p": {"type": "categorical", "choices": [1, 1.0]}}, "params.p.choices"),
    ("condition_unknown_parent", {"p": {"type": "bool", "condition": {"nope": 1}}}, "params.p.condition"),
    ("condition_later_parent", {"p": {"type": "bool", "condition": {"q": True}}, "q": {"type": "bool"}}, "params.p.condition"),
    ("condition_bad_value", {**VALID, "p": {"type": "bool", "condition": {"a": "z"}}}, "params.p.condition"),
    ("condition_two_parents", {**VALID, "b": {"type": "bool"}, "p": {"type": "bool", "condition": {"a": "x", "b": True}}}, "params.p.condition"),
    ("default_above_high", {"p": {"type": "int", "low": 1, "high": 3, "default": 4}}, "params.p.default"),
    ("default_off_grid", {"p": {"type": "float", "low": 0.0, "high": 0.6, "step": 0.1, "default": 0.25}}, "params.p.default"),
    ("default_not_a_choice", {"p": {"type": "categorical", "choices": ["a"], "default": "b"}}, "params.p.default"),
    ("default_not_bool", {"p": {"type": "bool", "default": "yes please"}}, "params.p.default"),
    ("bad_name", {"bad-name": {"type": "bool"}}, "params.bad-name"),
    ("definition_not_mapping", {"p": 3}, "params.p"),
]  # fmt: skip


@pytest.mark.parametrize("data, key", [b[1:] for b in BAD_PARAMS], ids=[b[0] for b in BAD_PARAMS])
def test_invalid_param_raises_one_line_error_naming_file_and_key(tmp_path, data, key):
    path = write(tmp_path, yaml.safe_dump({"params": data}))
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert key in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text, needle",
    [
        ("params: {a: {type: bool}}\nextra: 1\n", "top-level key 'extra'"),
        ("description: x\n", "params"),
        ("params: {}\n", "params"),
        ("params: [1, 2]\n", "params"),
        ("- just\n- a list\n", "mapping"),
        ("params:\n  a: {type: bool\n", "YAML syntax error at line"),
        ("params:\n  a: {type: bool}\n  a: {type: bool}\n", "duplicate key 'a'"),
    ],
    ids=["top_level_unknown_key", "no_params", "empty_params", "params_list", "not_mapping",
         "yaml_syntax", "duplicate_param"],
)  # fmt: skip
def test_invalid_file_raises_space_error(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError, match=str(path)) as info:
        load_space(path)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_raises_space_error(tmp_path):
    with pytest.raises(SpaceError, match="not found") as info:
        load_space(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_parse_space_uses_source_in_messages():
    with pytest.raises(SpaceError, match=r"^<dict>: params\.p\.type"):
        parse_space({"params": {"p": {"type": "x"}}})


# --------------------------------------------------------------------------- accepted forms


def test_log_float_range_and_exponent_without_dot(tmp_path):
    path = write(
        tmp_path,
        """
        params:
          learning_rate: {type: float, low: 1e-5, high: 1e-2, log: true, default: 1e-3}
          smoothing: {type: categorical, choices: [0, 0.05, 0.1]}
        """,
    )
    space = load_space(path)
    lr = space["learning_rate"]
    assert (lr.low, lr.high, lr.default, lr.log) == (1e-5, 1e-2, 1e-3, True)
    assert space["smoothing"].choices == (0.0, 0.05, 0.1)  # ints mixed with floats -> floats


def test_condition_with_list_of_values_and_chain():
    space = parse_space(
        {
            "params": {
                "opt": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
                "momentum": {"type": "float", "low": 0.8, "high": 0.99, "condition": {"opt": ["sgd", "rmsprop"]}},
                "nesterov": {"type": "bool", "condition": {"momentum": 0.9}},
            }
        }
    )
    assert space["momentum"].condition == {"opt": ("sgd", "rmsprop")}
    assert space.is_active("momentum", {"opt": "rmsprop"})
    assert not space.is_active("momentum", {"opt": "adam"})
    assert space.is_active("nesterov", {"opt": "sgd", "momentum": 0.9})
    assert not space.is_active("nesterov", {"opt": "adam", "momentum": 0.9})  # parent inactive
    assert space.defaults() == {"opt": "adam"}


def test_default_value_fallbacks():
    assert Param("a", "categorical", choices=("x", "y")).default_value() == "x"
    assert Param("b", "bool").default_value() is False
    assert Param("c", "int", 2, 4).default_value() == 2
    assert Param("d", "float", 0.1, 0.5, default=0.3).default_value() == 0.3


def test_is_active_uses_parent_default_when_missing(cnn):
    assert not cnn.is_active("momentum", {})
    assert cnn.is_active("momentum", {"optimizer": "sgd"})
    assert cnn.is_active("momentum", {"optimizer": np.str_("sgd")})
    assert cnn.is_active("dropout", {})


# --------------------------------------------------------------------------- check_values


def test_check_values_drops_inactive_and_keeps_order(cnn):
    clean = cnn.check_values({"momentum": 0.9, "optimizer": "adam", "num_blocks": 2})
    assert clean == {"num_blocks": 2, "optimizer": "adam"}


def test_check_values_coerces_strings_and_numpy(cnn):
    clean = cnn.check_values(
        {
            "optimizer": "sgd",
            "momentum": "0.95",
            "learning_rate": "0.0005",
            "residual": "True",
            "filters": np.int64(64),
            "num_blocks": 3.0,
            "label_smoothing": 0,
        }
    )
    assert clean == {
        "filters": 64,
        "num_blocks": 3,
        "residual": True,
        "optimizer": "sgd",
        "momentum": 0.95,
        "learning_rate": 5e-4,
        "label_smoothing": 0.0,
    }
    assert type(clean["num_blocks"]) is int and type(clean["filters"]) is int


def test_check_values_fill_defaults(cnn):
    clean = cnn.check_values({"optimizer": "sgd"}, fill_defaults=True)
    assert clean["momentum"] == 0.9
    assert set(clean) == set(cnn.names())


@pytest.mark.parametrize(
    "values, name",
    [
        ({"nope": 1}, "'nope'"),
        ({"num_blocks": 5}, "params.num_blocks"),
        ({"num_blocks": 2.5}, "params.num_blocks"),
        ({"dropout": -0.1}, "params.dropout"),
        ({"l2": float("nan")}, "params.l2"),
        ({"filters": 48}, "params.filters"),
        ({"conv_type": "deformable"}, "params.conv_type"),
        ({"residual": "maybe"}, "params.residual"),
        ({"batch_norm": 2}, "params.batch_norm"),
        ({"optimizer": "sgd", "momentum": 1.5}, "params.momentum"),
    ],
)
def test_check_values_errors_name_the_param(cnn, values, name):
    with pytest.raises(SpaceError) as info:
        cnn.check_values(values)
    assert name in str(info.value)
    assert str(CNN_YAML) in str(info.value)


# --------------------------------------------------------------------------- resolution


def test_resolve_default_and_bare_name_find_repo_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path))  # project dir without search_spaces/
    assert resolve_space_path(None).resolve() == CNN_YAML
    assert resolve_space_path("cnn").resolve() == CNN_YAML


def test_resolve_prefers_project_dir(tmp_path, monkeypatch):
    (tmp_path / "search_spaces").mkdir()
    own = tmp_path / "search_spaces" / "cnn.yaml"
    own.write_text("params: {a: {type: bool}}\n")
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path))
    assert resolve_space_path(None) == own
    assert load_space(resolve_space_path(None)).names() == ["a"]


def test_resolve_unknown_name_lists_known_spaces(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path))
    with pytest.raises(SpaceError, match="'no_such_space' not found.*known: .*cnn"):
        resolve_space_path("no_such_space")


def test_resolve_paths_are_returned_as_given(tmp_path):
    assert resolve_space_path(str(tmp_path / "x.yaml")) == tmp_path / "x.yaml"
    assert resolve_space_path(tmp_path / "y") == tmp_path / "y"
    assert resolve_space_path("spaces/z.yml") == Path("spaces/z.yml")


def test_default_space_constant():
    assert space_mod.DEFAULT_SPACE == "cnn"
