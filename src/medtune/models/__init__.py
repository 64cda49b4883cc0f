"""Model builders: ``build_model(params, input_shape, n_classes)`` picks one by ``backbone``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medtune.errors import ConfigError

__all__ = ["BACKBONES", "build_model"]

BACKBONES = ("custom",)
"""Values of the ``backbone`` parameter that :func:`build_model` can build."""


def build_model(params: Mapping[str, Any], input_shape: tuple[int, int, int], n_classes: int):
    """Build an uncompiled ``keras.Model`` for ``params["backbone"]`` (default ``custom``).

    The model takes raw pixel values 0..255 of shape ``input_shape`` and outputs float32
    class probabilities.

    Raises:
        ConfigError: an unknown backbone or an invalid parameter value.
    """
    backbone = params.get("backbone", "custom")
    if backbone == "custom":
        from medtune.models.cnn import build_cnn  # late: keeps `import medtune.models` light

        return build_cnn(params, input_shape, n_classes)
    available = ", ".join(BACKBONES)
    raise ConfigError(f"backbone {backbone!r} not available yet (available: {available})")
