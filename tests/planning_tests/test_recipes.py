"""Warm-start recipes adapted to each space: only what the space can express, in its ranges."""

from __future__ import annotations

from medtune.planning.recipes import RECIPES, recipes_for
from medtune.space import load_space, parse_space, resolve_space_path


def _space(name):
    return load_space(resolve_space_path(name))


def test_the_auto_space_starts_from_both_recipes():
    recipes = dict(recipes_for(_space("auto_cpu")))
    assert list(recipes) == ["lite0_finetune", "lite0_whole", "hand_cnn"]  # lite0_finetune: the space's defaults
    assert recipes["lite0_whole"]["fine_tune_layers"] == 140 and recipes["lite0_whole"]["fine_tune_lr_factor"] == 0.2
    assert recipes["lite0_finetune"] == _space("auto_cpu").defaults()
    assert recipes["hand_cnn"]["conv_type"] == "separable" and recipes["hand_cnn"]["lr_schedule"] == "cosine"


def test_a_space_without_the_backbone_leaves_the_transfer_recipe_out():
    names = [n for n, _ in recipes_for(_space("cnn_cpu"))]
    assert names == ["hand_cnn", "space_defaults"]


def test_values_outside_the_space_fall_back_to_its_defaults():
    [(_, hand), _] = recipes_for(_space("demo"))  # demo's num_blocks is 2..3, the recipe wants 4
    assert hand["num_blocks"] == 3 and hand["conv_type"] == "separable"
    space = parse_space(
        {
            "params": {
                "filters": {"type": "categorical", "choices": [8, 16], "default": 8},
                "learning_rate": {"type": "float", "low": 1e-4, "high": 5e-4, "log": True, "default": 2e-4},
            }
        }
    )
    [(name, params)] = recipes_for(space)  # both recipes collapse onto the defaults
    assert params == {"filters": 8, "learning_rate": 2e-4} and name in RECIPES


def test_named_recipes_come_alone_without_the_space_defaults():
    assert [n for n, _ in recipes_for(_space("auto_cpu"), ["lite0_whole"])] == ["lite0_whole"]
    assert recipes_for(_space("cnn_cpu"), ["lite0_whole"]) == []  # the space has no Lite0
