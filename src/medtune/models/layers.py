"""Serialisable layers medtune models contain (imported by ``medtune.serving`` before loading)."""

from __future__ import annotations

import importlib

import keras

__all__ = ["BackbonePreprocess", "PREPROCESS_MODULES"]

PREPROCESS_MODULES = {
    "mobilenet_v2": "mobilenet_v2",
    "efficientnet_b0": "efficientnet",
    "xception": "xception",
    "resnet50": "resnet50",
}
"""Backbone name -> the ``keras.applications`` module whose ``preprocess_input`` it needs."""


@keras.saving.register_keras_serializable(package="medtune")
class BackbonePreprocess(keras.layers.Layer):
    """Raw pixels 0..255 -> what a ``keras.applications`` backbone expects.

    Grey images (1 channel) are repeated to 3 channels first; then the backbone's own
    ``keras.applications.<module>.preprocess_input`` runs inside the model, so callers (the
    pyfunc, Grad-CAM, ``predict``) feed raw pixels exactly as for the custom CNN.
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        if backbone not in PREPROCESS_MODULES:
            raise ValueError(f"backbone {backbone!r}: no preprocessing known")
        self.backbone = backbone
        module = importlib.import_module(f"keras.applications.{PREPROCESS_MODULES[backbone]}")
        self._preprocess = module.preprocess_input

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        return self._preprocess(x)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}
