"""Known-good configurations a new study starts from (warm starts).

Documented recipes, each a plain params dict: what a careful person would train first, in the
order they would (the pretrained network before a network from scratch). A new study tries the
ones its space can express before the sampler's own choices, so a search never
starts below the hand-made baseline. ``recipes_for(space)`` adapts each recipe to a space: keys
the space does not have are dropped, active keys it lacks get the space's default, and a value
outside the space's range falls back to the default; a recipe whose backbone the space cannot
choose is left out.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "recipes_for"]

LITE0_FINETUNE: dict[str, Any] = {
    "backbone": "efficientnet_lite0",
    "head_epochs": 1,
    "fine_tune_layers": 100,
    "fine_tune_lr_factor": 0.3,
    "dropout": 0.2,
    "dense_units": 256,
    "l2": 1e-5,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "label_smoothing": 0.05,
    "augment": 0.2,
}

RECIPES: dict[str, dict[str, Any]] = {
    # A pretrained EfficientNet-Lite0 fine-tune: one head epoch, then the top layers at 0.3x the
    # rate with a cosine schedule (0.965 test accuracy on brain_mri at 128 px in 12 epochs).
    "lite0_finetune": LITE0_FINETUNE,
    # The plain Keras fine-tune of the brief: the whole backbone unfrozen (BatchNorm frozen) at a
    # fifth of the rate after the head epoch (about 0.98 on brain_mri at 160 px in 1 + 8 epochs).
    "lite0_whole": {
        **LITE0_FINETUNE,
        "fine_tune_layers": 140,
        "fine_tune_lr_factor": 0.2,
    },
    # The same fine-tune of the bigger EfficientNet-Lite1 (1.25-1.3x Lite0's cost per image,
    # bench/lite_cost.py), whole backbone: a GPU space offers it (plan rule 2).
    "lite1_whole": {
        **LITE0_FINETUNE,
        "backbone": "efficientnet_lite1",
        "fine_tune_layers": 200,
        "fine_tune_lr_factor": 0.2,
    },
    # The careful hand-made CNN of the brief: separable residual blocks, cosine schedule, label
    # smoothing 0.05 (about 0.96 test accuracy on brain_mri at 128 px after 30 epochs).
    "hand_cnn": {
        "backbone": "custom",
        "num_blocks": 4,
        "filters": 32,
        "kernel_size": 3,
        "conv_type": "separable",
        "residual": True,
        "batch_norm": True,
        "dropout": 0.3,
        "dense_units": 256,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": "cosine",
        "label_smoothing": 0.05,
        "augment": 0.2,
    },
}


def recipes_for(space, names: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(name, params)`` for each recipe ``space`` can express, adapted to it; then the space's
    defaults, unless ``names`` picks the recipes."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name in names or list(RECIPES):
        backbone = RECIPES[name].get("backbone", "custom")
        if not (space.fits("backbone", backbone) if "backbone" in space else backbone == "custom"):
            continue
        recipe = {k: v for k, v in RECIPES[name].items() if k in space and space.fits(k, v)}
        params = space.check_values(recipe, fill_defaults=True)
        if params not in [p for _, p in out]:
            out.append((name, params))
    defaults = space.defaults()
    if names is None and defaults not in [p for _, p in out]:
        out.append(("space_defaults", defaults))
    return out
