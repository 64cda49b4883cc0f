"""Serialisable layers medtune models contain (imported by ``medtune.serving`` before loading)."""

from __future__ import annotations

import keras

from medtune.models.backbones import BACKBONE_SPECS

__all__ = ["BackbonePreprocess", "HorizontalFlip", "TemperatureScaling"]


@keras.saving.register_keras_serializable(package="medtune")
class BackbonePreprocess(keras.layers.Layer):
    """Raw pixels 0..255 -> what a ``keras.applications`` backbone expects.

    Grey images (1 channel) are repeated to 3 channels first; then the backbone's own
    ``preprocess_input`` (named in the backbone table) runs inside the model, so callers (the
    pyfunc, Grad-CAM, ``predict``) feed raw pixels exactly as for the custom CNN.
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        if backbone not in BACKBONE_SPECS:
            raise ValueError(f"backbone {backbone!r}: no preprocessing known")
        self.backbone = backbone
        self._preprocess = BACKBONE_SPECS[backbone].preprocess_input()

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        return self._preprocess(x)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="medtune")
class HorizontalFlip(keras.layers.Layer):
    """Mirror NHWC images left to right (the flip of test-time augmentation, :mod:`medtune.models.tta`)."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="medtune")
class TemperatureScaling(keras.layers.Layer):
    """Class probabilities ``p`` -> ``softmax(log p / temperature)`` (:mod:`medtune.calibration`)."""

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        p = keras.ops.clip(keras.ops.cast(inputs, "float32"), 1e-12, 1.0)
        return keras.ops.softmax(keras.ops.log(p) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
