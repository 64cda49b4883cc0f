"""Grad-CAM for Keras image classifiers: compute heatmaps (arrays); overlay them separately.

Works for Sequential and Functional models, residual branches, and backbones nested as a layer
inside an outer model (``keras.applications`` models wrapped with preprocessing and a head).
The feature map is captured during one ordinary eager forward pass of the whole model: the
target layer's ``call`` is wrapped for the duration of the pass, so the tensor recorded is the
very tensor the rest of the model consumes and ``tf.GradientTape`` can differentiate the class
score with respect to it, however deeply the layer is nested.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from medtune.errors import ConfigError
from medtune.models.folding import FoldedConv

logger = logging.getLogger(__name__)

_CONV_TYPES = (
    FoldedConv,  # a convolution with its BatchNorm folded in (medtune.models.folding)
    keras.layers.Conv2D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Conv2DTranspose,
)
# Layers whose 4-D output still counts as "the conv feature map" when they follow a conv.
_FEATURE_TYPES = _CONV_TYPES + (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Add,
    keras.layers.Multiply,
    keras.layers.Concatenate,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        out = layer.output
    except (AttributeError, ValueError, RuntimeError):
        return None
    shape = getattr(out, "shape", None)
    return None if shape is None else len(shape)


def _contains_conv(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, _CONV_TYPES):
        return True
    return isinstance(layer, keras.Model) and any(_contains_conv(sub) for sub in layer.layers)


def _search(model: keras.Model) -> list[str] | None:
    layers = list(model.layers)
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if isinstance(layer, keras.Model):
            inner = _search(layer)
            if inner:
                return [layer.name, *inner]
            continue
        if (
            isinstance(layer, _FEATURE_TYPES)
            and _output_rank(layer) == 4
            and any(_contains_conv(prev) for prev in layers[: i + 1])
        ):
            return [layer.name]
    return None


def find_last_conv_layer(model: keras.Model) -> list[str]:
    """Locate the last 4-D convolutional feature map of a model, searching nested models.

    The candidate layers are convolutions (``Conv2D``, ``SeparableConv2D``,
    ``DepthwiseConv2D``) and the activation / batch-norm / ``Add`` / ``Multiply`` /
    ``Concatenate`` layers that follow them; the last one in the model's layer order with a 4-D
    output wins, so a residual block's ``Add`` (or a backbone's final ``out_relu``) is chosen
    rather than the conv inside it. Pooling and dropout layers are skipped.

    Args:
        model: A built Keras model.

    Returns:
        Layer names from the outer model inwards, e.g. ``["mobilenetv2_0.35_32", "out_relu"]``
        or ``["conv2d_2"]``.

    Raises:
        ConfigError: The model has no such layer (or is not built).
    """
    path = _search(model)
    if not path:
        raise ConfigError(
            f"model {model.name!r} has no built convolutional layer with a 4-D output; "
            "Grad-CAM needs one (pass layer_path= or build the model first)"
        )
    return path


def _resolve(model: keras.Model, path: Sequence[str]) -> keras.layers.Layer:
    if not path:
        raise ConfigError("layer_path must name at least one layer")
    layer: keras.layers.Layer = model
    for depth, name in enumerate(path):
        if not isinstance(layer, keras.Model):
            raise ConfigError(f"layer_path {list(path)}: {path[depth - 1]!r} is not a model")
        try:
            layer = layer.get_layer(name)
        except ValueError as err:
            raise ConfigError(f"layer_path {list(path)}: no layer {name!r} in {layer.name!r}") from err
    return layer


@contextlib.contextmanager
def _capture_output(layer: keras.layers.Layer) -> Iterator[list]:
    """Record what ``layer.call`` returns while the context is open (instance-level wrap)."""
    captured: list = []
    original = layer.call

    def call(*args, **kwargs):
        out = original(*args, **kwargs)
        captured.append(out)
        return out

    with _replace_attr(layer, "call", call):
        yield captured


def _output_layer(model: keras.Model) -> keras.layers.Layer | None:
    try:
        return model.outputs[0]._keras_history.operation
    except (AttributeError, IndexError, TypeError, ValueError):
        return model.layers[-1] if getattr(model, "layers", None) else None


@contextlib.contextmanager
def _logits_mode(model: keras.Model) -> Iterator[str | None]:
    """Make the model output pre-activation scores while the context is open.

    Grad-CAM differentiates the class score before softmax: the gradient of a saturated softmax
    probability mostly contrasts the class with its runner-up. When the layer producing the
    output ends in a softmax or sigmoid (``Dense(activation=...)``, ``Activation``, ``Softmax``,
    also inside a nested model), that activation is switched off for the pass and the kind is
    yielded (``"softmax"`` / ``"sigmoid"``); otherwise nothing changes and None is yielded.
    """
    layer = _output_layer(model)
    while isinstance(layer, keras.Model):
        layer = _output_layer(layer)
    if isinstance(layer, keras.layers.Softmax):
        with _replace_attr(layer, "call", lambda inputs, *a, **k: inputs):
            yield "softmax"
        return
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    if name in ("softmax", "sigmoid"):
        with _replace_attr(layer, "activation", keras.activations.linear):
            yield name
        return
    yield None


@contextlib.contextmanager
def _replace_attr(obj: object, name: str, value: object) -> Iterator[None]:
    """Set an instance attribute for the duration of the context, bypassing Keras tracking."""
    had_own = name in vars(obj)
    original = vars(obj).get(name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if had_own:
            object.__setattr__(obj, name, original)
        else:
            object.__delattr__(obj, name)


def _prepare_images(model: keras.Model, images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:  # a batch of grey images without channel axis
        x = x[..., None]
    if x.ndim != 4:
        raise ConfigError(f"images must be (N, H, W[, C]), got shape {np.shape(images)}")
    try:
        expected = model.inputs[0].shape
    except (AttributeError, IndexError, TypeError, ValueError):
        expected = None
    if expected is not None and len(expected) == 4 and expected[-1] not in (None, x.shape[-1]):
        raise ConfigError(f"images have {x.shape[-1]} channel(s) but model {model.name!r} expects {expected[-1]}")
    return x


def _n_classes(model: keras.Model) -> int | None:
    try:
        k = model.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return None if k is None else max(int(k), 2)


def _to_proba(out: tf.Tensor, kind: str | None = None) -> tf.Tensor:
    """Model outputs to class probabilities: (N, 1) sigmoid -> (N, 2); logits -> softmax.

    ``kind`` names the activation that :func:`_logits_mode` switched off, if any.
    """
    out = tf.cast(out, tf.float32)
    if kind == "softmax" and out.shape[-1] > 1:
        return tf.nn.softmax(out, axis=-1)
    if kind == "sigmoid" and out.shape[-1] > 1:  # independent sigmoids: renormalise
        p = tf.sigmoid(out)
        return p / tf.reduce_sum(p, axis=-1, keepdims=True)
    if out.shape[-1] == 1:
        p = tf.sigmoid(out) if kind == "sigmoid" or not _in_unit_interval(out) else out
        return tf.concat([1.0 - p, p], axis=-1)
    sums = tf.reduce_sum(out, axis=-1)
    if _in_unit_interval(out) and bool(tf.reduce_all(tf.abs(sums - 1.0) < 1e-3)):
        return out
    return tf.nn.softmax(out, axis=-1)


def _in_unit_interval(t: tf.Tensor) -> bool:
    return bool(tf.reduce_all((t >= 0.0) & (t <= 1.0)))


def _class_scores(out: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """The differentiable score of each sample's target class (logit where available)."""
    out = tf.cast(out, tf.float32)
    if out.shape[-1] == 1:  # single sigmoid unit: class 1 = output, class 0 = its opposite
        return tf.where(classes == 1, out[:, 0], -out[:, 0])
    return tf.gather(out, classes, axis=1, batch_dims=1)


def _cam_batch(
    model: keras.Model,
    layer: keras.layers.Layer,
    x: np.ndarray,
    classes: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    xt = tf.convert_to_tensor(x)
    with (
        _capture_output(layer) as captured,
        _logits_mode(model) as kind,
        tf.GradientTape() as tape,
    ):
        out = model(xt, training=False)
        if isinstance(out, (list, tuple, dict)):
            raise ConfigError(f"model {model.name!r} has several outputs; Grad-CAM needs one")
        if not captured:
            raise ConfigError(f"layer {layer.name!r} was not called by the model's forward pass")
        feat = captured[-1]
        proba = _to_proba(out, kind)
        cls = (
            tf.argmax(proba, axis=-1, output_type=tf.int32) if classes is None else tf.constant(classes, dtype=tf.int32)
        )
        score = tf.reduce_sum(_class_scores(out, cls))
    grads = tape.gradient(score, feat)
    if grads is None:
        raise ConfigError(f"the output of model {model.name!r} does not depend on layer {layer.name!r}")
    feat = tf.cast(feat, tf.float32)
    grads = tf.cast(grads, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
    cam = tf.nn.relu(tf.reduce_sum(weights * feat, axis=-1)).numpy()  # (B, h, w)
    cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    peak = cam.reshape(len(cam), -1).max(axis=1)
    scale = np.divide(1.0, peak, out=np.zeros_like(peak), where=peak > 0)
    cam = cam * scale[:, None, None]
    resized = tf.image.resize(cam[..., None], x.shape[1:3], method="bilinear").numpy()[..., 0]
    return np.clip(resized, 0.0, 1.0).astype(np.float32), proba.numpy().astype(np.float32)


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    class_indices: Sequence[int] | None = None,
    layer_path: list[str] | None = None,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps for a batch of images.

    Args:
        model: A built Keras classifier with one output: softmax probabilities (N, K), logits
            (N, K), or a single sigmoid unit (N, 1) treated as two classes. When the output
            layer ends in a softmax/sigmoid, the class score differentiated is the logit before
            it (standard Grad-CAM), obtained by switching that activation off during the pass.
        images: Raw pixel values (0..255; the model rescales inside), shape (N, H, W, C), or
            (N, H, W) for grey images.
        class_indices: One target class per image; None explains the predicted class.
        layer_path: Feature-map layer as returned by :func:`find_last_conv_layer` (the default).
            For an ensemble (:mod:`medtune.models.ensemble`) the default averages the members'
            heatmaps, each taken for the ensemble's class; for test-time flipping
            (:mod:`medtune.models.tta`) the image's and the mirrored image's (mirrored back).
        batch_size: Images per forward/backward pass.

    Returns:
        ``(heatmaps, probabilities)``: float32 (N, H, W) in [0, 1], each scaled so its maximum is
        1 (all zeros when the gradients vanish), bilinearly resized to the image size; and
        float32 (N, n_classes) class probabilities.

    Raises:
        ConfigError: Bad images, class indices or layer path, or a model Grad-CAM cannot use.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    from medtune.calibration import uncalibrated
    from medtune.models.ensemble import members_of
    from medtune.models.tta import base_of

    inner = uncalibrated(model) if layer_path is None else None
    if inner is not None:  # a temperature changes no class: the heatmap of the model inside, calibrated probabilities
        proba = model.predict(_prepare_images(model, images), batch_size=batch_size, verbose=0).astype(np.float32)
        return gradcam(inner, images, class_indices, None, batch_size)[0], proba
    base = base_of(model) if layer_path is None else None
    if base is not None:  # test-time flip: the image's heatmap and the mirrored one of its mirror, averaged
        x = _prepare_images(model, images)
        proba = model.predict(x, batch_size=batch_size, verbose=0).astype(np.float32)
        target = proba.argmax(1) if class_indices is None else class_indices
        direct = gradcam(base, x, target, None, batch_size)[0]
        mirrored = gradcam(base, np.ascontiguousarray(x[:, :, ::-1]), target, None, batch_size)[0][:, :, ::-1]
        heat = (direct + mirrored) / 2
        peak = heat.reshape(len(heat), -1).max(axis=1) if len(heat) else np.zeros(0)
        heat = np.where(peak[:, None, None] > 0, heat / np.maximum(peak, 1e-12)[:, None, None], 0.0)
        return heat.astype(np.float32), proba
    members = members_of(model) if layer_path is None else []
    if members:  # an ensemble: each member's heatmap for the ensemble's class, averaged
        x = _prepare_images(model, images)
        proba = model.predict(x, batch_size=batch_size, verbose=0).astype(np.float32)
        target = proba.argmax(1) if class_indices is None else class_indices
        heat = np.mean([gradcam(m, x, target, None, batch_size)[0] for m in members], axis=0)
        return heat.astype(np.float32), proba
    x = _prepare_images(model, images)
    layer = _resolve(model, layer_path or find_last_conv_layer(model))
    n = len(x)
    classes = None
    if class_indices is not None:
        classes = np.asarray(class_indices, dtype=np.int64).reshape(-1)
        if len(classes) != n:
            raise ConfigError(f"{len(classes)} class indices for {n} images")
        k = _n_classes(model)
        if n and (classes.min() < 0 or (k is not None and classes.max() >= k)):
            raise ConfigError(f"class indices must lie in [0, {k}), got {classes.tolist()}")
    heatmaps, probas = [], []
    for start in range(0, n, batch_size):
        stop = start + batch_size
        cls = None if classes is None else classes[start:stop]
        h, p = _cam_batch(model, layer, x[start:stop], cls)
        heatmaps.append(h)
        probas.append(p)
    if not heatmaps:
        return np.zeros((0, *x.shape[1:3]), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(heatmaps), np.concatenate(probas)


def _resize_2d(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if a.shape == tuple(shape):
        return a
    return tf.image.resize(a[None, ..., None], shape, method="bilinear").numpy()[0, ..., 0]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a heatmap, coloured with the jet colormap, over an image.

    Args:
        image: Grey (H, W) or (H, W, 1), or RGB(A) (H, W, 3|4); uint8 0..255 or float (floats
            whose maximum is <= 1 are taken as 0..1).
        heatmap: (H', W') values in [0, 1]; resized to the image when the sizes differ.
        alpha: Heatmap weight in [0, 1].

    Returns:
        uint8 RGB array (H, W, 3).
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ConfigError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {np.shape(image)}")
    rgb = img[..., :3].astype(np.float32)
    if img.dtype != np.uint8 and rgb.size and float(rgb.max()) <= 1.0:
        rgb = rgb * 255.0
    heat = np.asarray(heatmap, dtype=np.float32).squeeze()
    if heat.ndim != 2:
        raise ConfigError(f"heatmap must be 2-D, got shape {np.shape(heatmap)}")
    heat = np.clip(np.nan_to_num(_resize_2d(heat, rgb.shape[:2])), 0.0, 1.0)
    coloured = colormaps["jet"](heat)[..., :3].astype(np.float32) * 255.0
    out = (1.0 - alpha) * rgb + alpha * coloured
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heatmap_concentration(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """How much more of the heatmap's mass lies inside a mask than a uniform map would put there.

    Returns:
        ``(mass inside mask / total mass) / (mask area / image area)``: 1.0 is no better than
        uniform, ``1 / area share`` is all mass inside. NaN for an all-zero heatmap.

    Raises:
        ConfigError: Shapes differ, or the mask is empty.
    """
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), 0.0, None)
    m = np.asarray(mask, dtype=bool)
    if heat.shape != m.shape:
        raise ConfigError(f"heatmap shape {heat.shape} differs from mask shape {m.shape}")
    if not m.any():
        raise ConfigError("mask is empty")
    total = heat.sum()
    if total <= 0:
        return float("nan")
    return float((heat[m].sum() / total) / m.mean())
