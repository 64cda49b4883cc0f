"""Test-time augmentation as one Keras model: the prediction averaged over the image and its mirror.

Like an ensemble (:mod:`medtune.models.ensemble`), the result is one ``keras.Model``, so it is
evaluated, gated, registered, served and explained exactly like the model it wraps;
:func:`medtune.explain.gradcam` averages the heatmap of the image with the mirrored heatmap of
the mirrored image (see :func:`base_of`). Final training adds it only when it scores better on
the validation images (``train -P tta=auto``).

Layout: ``image`` -> ``tta_base`` (the wrapped model, called on the image and on
``tta_flip(image)``) -> ``tta_average`` (float32 probabilities).
"""

from __future__ import annotations

__all__ = ["AVERAGE_LAYER", "BASE_NAME", "TTA_MODES", "base_of", "choose_flip", "with_flip"]

TTA_MODES = ("auto", "flip", "none")
BASE_NAME = "tta_base"
AVERAGE_LAYER = "tta_average"


def with_flip(model):
    """``model`` averaged over each image and its left-right mirror, as one model."""
    import keras

    from medtune.models.layers import HorizontalFlip

    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    model.name = BASE_NAME
    mirrored = HorizontalFlip(name="tta_flip")(inputs)
    outputs = keras.layers.Average(dtype="float32", name=AVERAGE_LAYER)([model(inputs), model(mirrored)])
    wrapped = keras.Model(inputs, outputs, name="tta_flip_average")
    wrapped.medtune_frozen_batchnorm = getattr(model, "medtune_frozen_batchnorm", False)
    return wrapped


def base_of(model):
    """The model wrapped by :func:`with_flip` (also after loading), or None."""
    names = [layer.name for layer in model.layers]
    if AVERAGE_LAYER not in names:
        return None
    return next(layer for layer in model.layers if layer.name == BASE_NAME)


def choose_flip(model, x_val, y_val, mode: str):
    """The final model with test-time flipping when ``mode`` says so (``auto``: when its validation
    macro-F1 is higher; the test images play no part).

    Returns ``(model, used, scores)``: ``scores`` has the validation macro-F1 ``plain`` and ``flip``
    (empty for ``none``).
    """
    from medtune.errors import ConfigError
    from medtune.training import predict_proba, validation_scores

    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode!r}: expected one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return model, False, {}
    flipped = with_flip(model)
    scores = {
        name: validation_scores(y_val, predict_proba(candidate, x_val))["val_macro_f1"]
        for name, candidate in (("plain", model), ("flip", flipped))
    }
    used = mode == "flip" or scores["flip"] > scores["plain"]
    return (flipped if used else model), used, scores
