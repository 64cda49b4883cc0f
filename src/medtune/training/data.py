"""The input pipeline: tf.data from cached uint8 arrays, augmentation on the batch, class weights."""

from __future__ import annotations

import logging
import math

import numpy as np
import tensorflow as tf

from medtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def without_autotune_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Switch off tf.data's autotuning thread (``AUTOTUNE`` knobs then take fixed defaults).

    With it on, most trials on brain_mri (96 px) stalled about 13 s once per ``fit``: at its end
    (destroying the iterator Keras pre-creates for the next epoch waited on tf.data's threads)
    or inside the last epoch. Off, none did in the runs measured, and epochs were no slower.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


# --------------------------------------------------------------------------- data


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    batch_size: int,
    *,
    training: bool,
    augment: float = 0.0,
    mixup: float = 0.0,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(float32 images 0..255, one-hot float32 labels)``.

    ``x`` stays where it is (a read-only ``np.memmap`` is fine): the pipeline batches
    indices and gathers each batch with numpy, so memory stays flat whatever the array
    size. With ``training``: the order is reshuffled every epoch (deterministic given
    ``seed``) and, when ``augment`` > 0, each batch is augmented on the fly: horizontal
    flip (p=0.5), rotation up to ``augment`` x 30 degrees, zoom up to ``augment`` x 20 %,
    shift up to ``augment`` x 10 %, brightness up to ``augment`` x 20 % of 255 and
    contrast up to ``augment`` x 30 %, clipped to 0..255; when ``mixup`` > 0, each augmented
    batch is then mixed with itself reversed (:func:`mix_batch`, ``alpha = mixup``). Without
    ``training``: input order, no augmentation or mixing.

    Raises:
        DataError: ``x``/``y`` shapes or labels are unusable.
        ConfigError: ``batch_size``, ``augment`` or ``mixup`` out of range.
    """
    y_arr = check_xy(x, y, n_classes)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size: needs an integer >= 1 (got {batch_size!r})")
    if not isinstance(augment, (int, float, np.number)) or not 0.0 <= float(augment) <= 1.0:
        raise ConfigError(f"augment: needs a strength in [0, 1] (got {augment!r})")
    if not isinstance(mixup, (int, float, np.number)) or isinstance(mixup, bool) or not 0.0 <= float(mixup) <= 10.0:
        raise ConfigError(f"mixup: needs a Beta alpha in [0, 10], 0 = off (got {mixup!r})")
    n = len(x)
    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))
    labels = tf.constant(y_arr, dtype=tf.int32)
    gather = gatherer(x, sort=training)

    def load(idx):
        if training:
            idx = tf.sort(idx)  # sequential reads from a memmap; order inside a batch is moot
        images = gather(idx)
        onehot = tf.one_hot(tf.gather(labels, idx), n_classes, dtype=tf.float32)
        return images, onehot

    ds = ds.map(load, num_parallel_calls=AUTOTUNE)
    if training and (augment > 0 or mixup > 0):
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        strength, alpha = float(augment), float(mixup)

        def vary(batch, s):
            images, onehot = batch
            if strength > 0:
                images = augment_batch(images, s, strength)
            if alpha > 0:
                images, onehot = mix_batch(images, onehot, tf.random.experimental.stateless_fold_in(s, 1), alpha)
            return images, onehot

        ds = tf.data.Dataset.zip((ds, seeds)).map(vary, num_parallel_calls=AUTOTUNE)
    return without_autotune_thread(ds.prefetch(AUTOTUNE))


def augment_batch(images: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Random flip / rotate / zoom / shift / brightness / contrast of a float32 NHWC batch.

    ``seed`` is a shape-[2] integer tensor (stateless randomness: same seed, same output).
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    u = tf.random.stateless_uniform(tf.stack([b, 7]), seed=tf.cast(seed, tf.int64), minval=-1.0, maxval=1.0)
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    flip = tf.where(u[:, 0] > 0, -1.0, 1.0)  # horizontal flip = mirrored x axis
    angle = u[:, 1] * strength * (math.pi / 6)
    zoom = 1.0 + u[:, 2] * strength * 0.2  # > 1 zooms in
    tx, ty = u[:, 3] * strength * 0.1 * wf, u[:, 4] * strength * 0.1 * hf
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
    # One affine map per image, output pixel (x, y) -> input (a0 x + a1 y + a2, b0 x + b1 y + b2):
    # input = centre + R(angle) / zoom @ (flip(output) - centre) - shift.
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    a2 = cx - a0 * cx - a1 * cy - tx
    b2 = cy - b0 * cx - b1 * cy - ty
    zeros = tf.zeros_like(cos)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1),
        output_shape=tf.stack([h, w]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    # Contrast around each image's mean, then brightness, as one multiply-add.
    brightness = u[:, 5] * strength * 0.2 * 255.0
    contrast = 1.0 + u[:, 6] * strength * 0.3
    mean = tf.reduce_mean(images, axis=[1, 2, 3])
    scale = contrast[:, None, None, None]
    offset = (mean * (1.0 - contrast) + brightness)[:, None, None, None]
    images = images * scale + offset
    return tf.clip_by_value(images, 0.0, 255.0)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup of a batch with itself reversed: ``lam x + (1 - lam) x[::-1]``, the same for the
    one-hot labels, ``lam ~ Beta(alpha, alpha)`` once per batch (stateless, from ``seed``).
    """
    seed = tf.cast(seed, tf.int64)
    g1 = tf.random.stateless_gamma([], seed=seed, alpha=alpha)
    g2 = tf.random.stateless_gamma([], seed=seed + 1, alpha=alpha)
    lam = g1 / (g1 + g2)
    return lam * images + (1.0 - lam) * tf.reverse(images, [0]), lam * labels + (1.0 - lam) * tf.reverse(labels, [0])


def gatherer(x: np.ndarray, *, sort: bool):
    """A TF function mapping a batch of int64 indices to float32 images gathered from ``x``."""
    tout = tf.as_dtype(x.dtype)

    def take(idx: np.ndarray) -> np.ndarray:
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and (sort or np.all(np.diff(idx) == 1)):
            return np.ascontiguousarray(x[idx[0] : idx[-1] + 1])  # a slice: one sequential read
        return np.ascontiguousarray(x[idx])

    def gather(idx):
        images = tf.numpy_function(take, [idx], Tout=tout, stateful=False)
        images.set_shape((None, *x.shape[1:]))
        return tf.cast(images, tf.float32)

    return gather


def check_images(x: np.ndarray) -> None:
    if getattr(x, "ndim", None) != 4:
        shape = getattr(x, "shape", None)
        raise DataError(f"images must be an array (N, H, W, C) (got shape {shape})")


def check_xy(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    check_images(x)
    y_arr = np.asarray(y)
    if y_arr.ndim != 1 or len(y_arr) != len(x):
        raise DataError(f"labels must be a 1-D array of {len(x)} class indices (got shape {y_arr.shape})")
    if len(x) == 0:
        raise DataError("no images: the array is empty")
    if not np.issubdtype(y_arr.dtype, np.integer):
        raise DataError(f"labels must be integer class indices (got dtype {y_arr.dtype})")
    if y_arr.min() < 0 or y_arr.max() >= n_classes:
        raise DataError(f"labels must lie in [0, {n_classes - 1}] (got {y_arr.min()}..{y_arr.max()})")
    return y_arr.astype(np.int32)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """``n_samples / (n_present_classes * count(c))`` for every class 0..n_classes-1.

    The sklearn "balanced" formula over the classes present in ``y``; a class absent from
    ``y`` gets weight 1.0 (it is still listed, so Keras can index every class).
    """
    y = np.asarray(y).astype(np.int64).ravel()
    counts = np.bincount(y, minlength=n_classes)[:n_classes] if len(y) else np.zeros(n_classes, int)
    present = np.count_nonzero(counts)
    return {c: float(len(y) / (present * counts[c])) if counts[c] else 1.0 for c in range(n_classes)}
