"""The classification head every medtune model ends with (custom CNN and transfer backbones)."""

from __future__ import annotations

from keras import layers


def classifier_head(x, n_classes: int, *, dense_units: int, dropout: float, regularizer=None):
    """GAP -> Dropout -> Dense(relu) -> Dropout -> Dense ``logits`` -> softmax ``probs`` (float32).

    The names are stable (``gap``, ``dense``, ``logits``, ``probs``): Grad-CAM, stage freezing and
    saved models rely on them; the softmax stays float32 under a mixed-precision policy.
    """
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout_gap")(x)
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=regularizer, name="dense")(x)
    x = layers.Dropout(dropout, name="dropout_dense")(x)
    x = layers.Dense(n_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="probs")(x)
