"""Compiling a model from plain params: optimiser, learning rate, loss with label smoothing."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import keras

from medtune.errors import ConfigError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- model


def compile_model(model: keras.Model, params: Mapping[str, Any]) -> keras.Model:
    """Compile with ``optimizer`` (adam | adamw + ``weight_decay`` | rmsprop | sgd + ``momentum``),
    ``learning_rate`` and categorical cross-entropy with ``label_smoothing``; metric ``accuracy``.
    With ``ema``, the optimiser keeps a moving average of the weights (``ema_momentum`` per step).

    Defaults: adam, 1e-3, weight decay 1e-4, momentum 0.9, no label smoothing, no average
    (momentum 0.99 when on). XLA is left to Keras ("auto": off on CPU-only machines).

    Raises:
        ConfigError: an unknown optimizer or an invalid value; the message names the param.
    """
    name = params.get("optimizer", "adam")
    lr = _positive(params.get("learning_rate", 1e-3), "learning_rate")
    ema = {}
    if params.get("ema", False):  # fit() puts the average in the model at each epoch's end
        ema = {"use_ema": True, "ema_momentum": _fraction(params.get("ema_momentum", 0.99), "ema_momentum")}
    smoothing = _fraction(params.get("label_smoothing", 0.0), "label_smoothing")
    if name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=lr, **ema)
    elif name == "adamw":
        decay = params.get("weight_decay", 1e-4)
        optimizer = keras.optimizers.AdamW(
            learning_rate=lr, weight_decay=_positive(decay, "weight_decay") if decay else 0.0, **ema
        )
    elif name == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate=lr, **ema)
    elif name == "sgd":
        momentum = _fraction(params.get("momentum", 0.9), "momentum")
        optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum, **ema)
    else:
        raise ConfigError(f"optimizer: {name!r} is not adam, adamw, rmsprop or sgd")
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
        metrics=["accuracy"],
    )
    return model


def _positive(value: Any, name: str) -> float:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{name}: needs a positive number (got {value!r})")
    return float(value)


def _fraction(value: Any, name: str) -> float:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name}: needs a number in [0, 1) (got {value!r})")
    return float(value)
