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

__all__ = ["AVERAGE_LAYER", "BASE_NAME", "TTA_MODES", "base_of", "with_flip"]

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
