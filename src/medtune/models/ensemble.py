"""Ensembles as one Keras model: members side by side, their probabilities averaged.

An ensemble of k trained classifiers (the top-k configurations, or k seeds of the best) becomes
one ``keras.Model`` whose output is the mean of the members' class probabilities. So it is
evaluated, gated, registered, saved, served and predicted exactly like a single model, and
:func:`medtune.explain.gradcam` averages the members' heatmaps (see :func:`members_of`).

Layout: ``image`` -> ``ensemble_member_0`` ... ``ensemble_member_{k-1}`` (the members, nested
models) -> ``ensemble_average`` (float32 probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AVERAGE_LAYER", "MEMBER_PREFIX", "build_ensemble", "members_of"]

MEMBER_PREFIX = "ensemble_member_"
AVERAGE_LAYER = "ensemble_average"


def build_ensemble(members: Sequence, name: str = "ensemble"):
    """One model averaging ``members``' probabilities; every member takes the same input.

    Raises:
        ValueError: fewer than two members, or members with different inputs or class counts.
    """
    import keras

    members = list(members)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members (got {len(members)})")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    classes = {m.output_shape[-1] for m in members}
    if len(shapes) != 1 or len(classes) != 1:
        raise ValueError(f"ensemble members differ: input shapes {sorted(shapes)}, classes {sorted(classes)}")
    for i, member in enumerate(members):
        member.name = f"{MEMBER_PREFIX}{i}"  # unique names at the ensemble's level
    inputs = keras.Input(shape=shapes.pop(), name="image")
    outputs = keras.layers.Average(dtype="float32", name=AVERAGE_LAYER)([m(inputs) for m in members])
    model = keras.Model(inputs, outputs, name=name)
    model.medtune_frozen_batchnorm = all(getattr(m, "medtune_frozen_batchnorm", False) for m in members)
    return model


def members_of(model) -> list:
    """The member models of an ensemble built by :func:`build_ensemble` (also after loading); [] otherwise."""
    import keras

    names = [layer.name for layer in model.layers]
    if AVERAGE_LAYER not in names:
        return []
    return [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)]
