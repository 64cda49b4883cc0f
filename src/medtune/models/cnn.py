"""The custom CNN, built from plain parameter values (no tuner needed).

Layout (``n = num_blocks``)::

    Input (0..255) -> Rescaling(1/255)
    block i in 0..n-1:  [conv -> (BN) -> ReLU] x convs_per_block   (filters * 2**i, capped
                        at max_filters when given)
                        (+ shortcut, 1x1 projection when channels differ, when residual)
                        -> ReLU named ``block{i}_relu`` (``last_conv`` for the last block)
                        -> MaxPool ``block{i}_pool`` (all blocks but the last)
    GlobalAveragePooling -> Dropout -> Dense(dense_units, relu, L2) -> Dropout
    -> Dense(n_classes) ``logits`` -> softmax Activation ``probs`` (float32)

The last block is not pooled, so ``last_conv`` is the model's last layer with a 4-D output
and keeps twice the resolution for Grad-CAM. Conv layers are named ``block{i}_conv{j}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
from keras import layers, regularizers

from medtune.errors import ConfigError
from medtune.models.head import classifier_head

__all__ = ["DEFAULTS", "LAST_CONV_LAYER", "build_cnn"]

LAST_CONV_LAYER = "last_conv"

DEFAULTS: dict[str, Any] = {
    "num_blocks": 3,
    "filters": 32,
    "kernel_size": 3,
    "conv_type": "standard",
    "residual": False,
    "batch_norm": True,
    "dropout": 0.3,
    "l2": 1e-4,
    "dense_units": 256,
    "convs_per_block": 2,
    "max_filters": 512,  # caps "doubling per block": 256 x 2**3 would be 211M params
}
"""Values used for parameters missing from ``params`` (they match ``search_spaces/cnn.yaml``)."""


def build_cnn(params: Mapping[str, Any], input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Build (not compile) the custom CNN.

    Args:
        params: architecture values (``num_blocks``, ``filters``, ``kernel_size``,
            ``conv_type``, ``residual``, ``batch_norm``, ``dropout``, ``l2``, ``dense_units``,
            and optionally ``convs_per_block`` and ``max_filters``); other keys
            (optimizer, batch_size, ...) are ignored, missing ones take :data:`DEFAULTS`.
        input_shape: ``(height, width, channels)``; the model takes raw pixels 0..255.
        n_classes: number of output classes (>= 2).

    Returns:
        An uncompiled ``keras.Model`` named ``custom_cnn`` whose output is float32
        probabilities (safe under a mixed-precision policy).

    Raises:
        ConfigError: an invalid value; the message names the parameter.
    """
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    num_blocks = _int(p, "num_blocks", 1, 8)
    filters = _int(p, "filters", 1, 4096)
    max_filters = _int(p, "max_filters", 1, 65536) if p["max_filters"] is not None else None
    kernel_size = _int(p, "kernel_size", 1, 15)
    convs_per_block = _int(p, "convs_per_block", 1, 8)
    dense_units = _int(p, "dense_units", 1, 65536)
    conv_type = p["conv_type"]
    if conv_type not in ("standard", "separable"):
        raise ConfigError(f"conv_type: {conv_type!r} is not 'standard' or 'separable'")
    residual = _bool(p, "residual")
    batch_norm = _bool(p, "batch_norm")
    dropout = _float(p, "dropout", 0.0, 1.0, high_open=True)
    l2 = _float(p, "l2", 0.0, math.inf)
    input_shape = _shape(input_shape, num_blocks)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError(f"n_classes: needs an integer >= 2 (got {n_classes!r})")

    reg = regularizers.L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    for i in range(num_blocks):
        width = filters * 2**i if max_filters is None else min(filters * 2**i, max_filters)
        shortcut = x
        for j in range(convs_per_block):
            x = _conv(conv_type, width, kernel_size, reg, not batch_norm, f"block{i}_conv{j}")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn{j}")(x)
            if j < convs_per_block - 1 or not residual:
                x = layers.Activation("relu", name=f"block{i}_act{j}")(x)
        if residual:
            if shortcut.shape[-1] != width:
                shortcut = layers.Conv2D(
                    width, 1, use_bias=not batch_norm, kernel_regularizer=reg, name=f"block{i}_proj"
                )(shortcut)
                if batch_norm:
                    shortcut = layers.BatchNormalization(momentum=0.9, name=f"block{i}_proj_bn")(shortcut)
            x = layers.Add(name=f"block{i}_add")([x, shortcut])
        last = i == num_blocks - 1
        x = layers.Activation("relu", name=LAST_CONV_LAYER if last else f"block{i}_relu")(x)
        if not last:
            x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)

    outputs = classifier_head(x, n_classes, dense_units=dense_units, dropout=dropout, regularizer=reg)
    return keras.Model(inputs, outputs, name="custom_cnn")


def _conv(conv_type: str, width: int, kernel_size: int, reg, use_bias: bool, name: str):
    if conv_type == "separable":
        return layers.SeparableConv2D(
            width,
            kernel_size,
            padding="same",
            use_bias=use_bias,
            depthwise_regularizer=reg,
            pointwise_regularizer=reg,
            name=name,
        )
    return layers.Conv2D(width, kernel_size, padding="same", use_bias=use_bias, kernel_regularizer=reg, name=name)


def _int(p: Mapping, name: str, low: int, high: int) -> int:
    value = p[name]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: needs an integer in [{low}, {high}] (got {value!r})")
    return value


def _float(p: Mapping, name: str, low: float, high: float, *, high_open: bool = False) -> float:
    value = p[name]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bound = ")" if high_open else "]"
        raise ConfigError(f"{name}: needs a number in [{low}, {high}{bound} (got {value!r})")
    return float(value)


def _bool(p: Mapping, name: str) -> bool:
    value = p[name]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ConfigError(f"{name}: needs true or false (got {value!r})")


def _shape(input_shape: Any, num_blocks: int) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape: needs (height, width, channels) (got {input_shape!r})")
    smallest = 2 ** (num_blocks - 1)
    if min(shape[:2]) < smallest:
        raise ConfigError(
            f"num_blocks: {num_blocks} blocks pool the image {num_blocks - 1} times and need "
            f"at least {smallest}x{smallest} pixels (input is {shape[0]}x{shape[1]})"
        )
    return shape
