"""Training on arrays: input pipeline, compile, fit with validation scores, predict.

Plain functions on numpy arrays and Keras models; no tracking here (never imports mlflow).
Callers log what :func:`fit` returns.

Typical use::

    configure_threads()
    train_ds = make_dataset(x_train, y_train, k, params["batch_size"], training=True,
                            augment=params["augment"], seed=seed)
    val_ds = make_dataset(x_val, y_val, k, 64, training=False)
    model = compile_model(build_model(params, x_train.shape[1:], k), params)
    history = fit(model, train_ds, val_ds, y_val=y_val, epochs=10,
                  class_weight=balanced_class_weights(y_train, k))
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from medtune.errors import ConfigError, DataError, TrainingDiverged

__all__ = [
    "EpochScores",
    "NaNGuard",
    "PreciseBatchNorm",
    "TrainingDiverged",
    "augment_batch",
    "balanced_class_weights",
    "compile_model",
    "configure_threads",
    "StagedEarlyStopping",
    "fit",
    "fit_stages",
    "make_dataset",
    "predict_proba",
    "reestimate_batchnorm",
    "release_model",
    "usable_cpus",
    "validation_scores",
]

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def _without_autotune_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Switch off tf.data's autotuning thread (``AUTOTUNE`` knobs then take fixed defaults).

    With it on, most trials on brain_mri (96 px) stalled about 13 s once per ``fit``: at its end
    (destroying the iterator Keras pre-creates for the next epoch waited on tf.data's threads)
    or inside the last epoch. Off, none did in the runs measured, and epochs were no slower.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


# --------------------------------------------------------------------------- threads


def configure_threads(intra: int | None = None, inter: int | None = None) -> tuple[int, int]:
    """Set TensorFlow's intra-/inter-op thread pools; call before any TF work.

    Defaults: ``intra`` = CPUs usable by this process (affinity and cgroup quota honoured),
    ``inter`` = 2. Safe to call more than once: once TF has started, a different request is
    logged and ignored.

    Returns:
        The ``(intra, inter)`` values in effect.
    """
    intra = int(intra) if intra else usable_cpus()
    inter = int(inter) if inter else 2
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        current = (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )
        log.warning(
            "TensorFlow already started; keeping threads intra=%s inter=%s (asked %s, %s)",
            *current,
            intra,
            inter,
        )
        return current
    return intra, inter


def usable_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


# --------------------------------------------------------------------------- data


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    batch_size: int,
    *,
    training: bool,
    augment: float = 0.0,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(float32 images 0..255, one-hot float32 labels)``.

    ``x`` stays where it is (a read-only ``np.memmap`` is fine): the pipeline batches
    indices and gathers each batch with numpy, so memory stays flat whatever the array
    size. With ``training``: the order is reshuffled every epoch (deterministic given
    ``seed``) and, when ``augment`` > 0, each batch is augmented on the fly: horizontal
    flip (p=0.5), rotation up to ``augment`` x 30 degrees, zoom up to ``augment`` x 20 %,
    shift up to ``augment`` x 10 %, brightness up to ``augment`` x 20 % of 255 and
    contrast up to ``augment`` x 30 %, clipped to 0..255. Without ``training``: input
    order, no augmentation (``augment`` ignored).

    Raises:
        DataError: ``x``/``y`` shapes or labels are unusable.
        ConfigError: ``batch_size`` or ``augment`` out of range.
    """
    y_arr = _check_xy(x, y, n_classes)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size: needs an integer >= 1 (got {batch_size!r})")
    if not isinstance(augment, (int, float, np.number)) or not 0.0 <= float(augment) <= 1.0:
        raise ConfigError(f"augment: needs a strength in [0, 1] (got {augment!r})")
    n = len(x)
    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))
    labels = tf.constant(y_arr, dtype=tf.int32)
    gather = _gatherer(x, sort=training)

    def load(idx):
        if training:
            idx = tf.sort(idx)  # sequential reads from a memmap; order inside a batch is moot
        images = gather(idx)
        onehot = tf.one_hot(tf.gather(labels, idx), n_classes, dtype=tf.float32)
        return images, onehot

    ds = ds.map(load, num_parallel_calls=AUTOTUNE)
    if training and augment > 0:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        strength = float(augment)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (augment_batch(batch[0], s, strength), batch[1]),
            num_parallel_calls=AUTOTUNE,
        )
    return _without_autotune_thread(ds.prefetch(AUTOTUNE))


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


def _gatherer(x: np.ndarray, *, sort: bool):
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


def _check_images(x: np.ndarray) -> None:
    if getattr(x, "ndim", None) != 4:
        shape = getattr(x, "shape", None)
        raise DataError(f"images must be an array (N, H, W, C) (got shape {shape})")


def _check_xy(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    _check_images(x)
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


# --------------------------------------------------------------------------- model


def compile_model(model: keras.Model, params: Mapping[str, Any]) -> keras.Model:
    """Compile with ``optimizer`` (adam | adamw + ``weight_decay`` | rmsprop | sgd + ``momentum``),
    ``learning_rate`` and categorical cross-entropy with ``label_smoothing``; metric ``accuracy``.

    Defaults: adam, 1e-3, weight decay 1e-4, momentum 0.9, no label smoothing. XLA is left to
    Keras ("auto": off on CPU-only machines).

    Raises:
        ConfigError: an unknown optimizer or an invalid value; the message names the param.
    """
    name = params.get("optimizer", "adam")
    lr = _positive(params.get("learning_rate", 1e-3), "learning_rate")
    smoothing = _fraction(params.get("label_smoothing", 0.0), "label_smoothing")
    if name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=lr)
    elif name == "adamw":
        decay = params.get("weight_decay", 1e-4)
        optimizer = keras.optimizers.AdamW(
            learning_rate=lr, weight_decay=_positive(decay, "weight_decay") if decay else 0.0
        )
    elif name == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate=lr)
    elif name == "sgd":
        momentum = _fraction(params.get("momentum", 0.9), "momentum")
        optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
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


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """``n_samples / (n_present_classes * count(c))`` for every class 0..n_classes-1.

    The sklearn "balanced" formula over the classes present in ``y``; a class absent from
    ``y`` gets weight 1.0 (it is still listed, so Keras can index every class).
    """
    y = np.asarray(y).astype(np.int64).ravel()
    counts = np.bincount(y, minlength=n_classes)[:n_classes] if len(y) else np.zeros(n_classes, int)
    present = np.count_nonzero(counts)
    return {c: float(len(y) / (present * counts[c])) if counts[c] else 1.0 for c in range(n_classes)}


# --------------------------------------------------------------------------- callbacks


class EpochScores(keras.callbacks.Callback):
    """Scores the validation set once per epoch: ``val_loss``, ``val_accuracy``, ``val_macro_f1``,
    ``val_balanced_accuracy``, plus ``epoch_seconds``.

    One ``predict`` pass gives all four (Keras's own ``validation_data`` pass would be a second
    one, about 7 % of an epoch on brain_mri): ``val_loss`` is the compiled loss (label smoothing
    included) plus the regularisation losses, as Keras computes it. The last pass's
    probabilities stay in ``last_proba`` (the final model's validation predictions).

    Put it FIRST in the callback list so that later callbacks (early stopping, pruning,
    checkpoints) can read these keys; :func:`fit` does this for you.

    Args:
        val_data: a dataset of validation images (or ``(images, labels)``), in the order of
            ``y_val``, e.g. ``make_dataset(..., training=False)``.
        y_val: the validation class indices.
    """

    def __init__(self, val_data: tf.data.Dataset, y_val: np.ndarray):
        super().__init__()
        self.val_data = val_data
        self.y_val = np.asarray(y_val).astype(np.int64)
        self.last_proba: np.ndarray | None = None
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probs = np.asarray(self.model.predict(self.val_data, verbose=0), dtype=np.float32)
        self.last_proba = probs
        logs.update(validation_loss_accuracy(self.model, self.y_val, probs))
        logs.update(validation_scores(self.y_val, probs))
        logs["epoch_seconds"] = time.perf_counter() - self._start


class PreciseBatchNorm(keras.callbacks.Callback):
    """Re-estimates BatchNorm statistics on un-augmented training images after every epoch.

    While training, a BatchNorm layer's moving mean and variance follow the last few augmented
    batches (momentum 0.9: about ten) of weights that keep changing, so the model that is
    validated and saved normalises with statistics that fit neither its current weights nor
    clean images. On brain_mri at 64 px one configuration's validation macro-F1 jumped between
    0.17 and 0.82 from epoch to epoch for that reason alone; with the statistics re-estimated it
    rose steadily from 0.72 to 0.88 ("precise BatchNorm", Wu & Johnson 2021). Costs one
    forward pass over ``images`` training images per epoch.

    Must run before :class:`EpochScores` (:func:`fit` puts it first).

    Args:
        x: the training images (a memmap is fine); a fixed sample of ``images`` of them, drawn
            once with ``seed``, is used every epoch.
    """

    def __init__(self, x: np.ndarray, *, images: int = 512, batch_size: int = 128, seed: int = 0):
        super().__init__()
        _check_images(x)
        n = len(x)
        pick = np.random.default_rng(seed).choice(n, size=images, replace=False) if n > images else np.arange(n)
        self.x = x
        self.index = np.sort(pick)
        self.batch_size = int(batch_size)
        self._images: np.ndarray | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self._images is None:
            self._images = np.asarray(self.x[self.index])  # one read; reused every epoch
        reestimate_batchnorm(self.model, self._images, batch_size=self.batch_size)


def reestimate_batchnorm(model: keras.Model, images: np.ndarray, *, batch_size: int = 128) -> int:
    """Set every trainable BatchNorm layer's moving statistics to their average over ``images``.

    The model runs forward in training mode batch by batch (each BatchNorm layer normalising with
    its batch's statistics, as in training); each layer's moving mean and variance become the
    mean of its per-batch values. Frozen BatchNorm layers (a pretrained backbone's) are left
    alone, and so is everything when ``images`` holds fewer than two images.

    Returns:
        The number of BatchNorm layers re-estimated.
    """
    # _flatten_layers: every layer, nested backbones included (what Keras itself walks)
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    step = max(2, int(batch_size))
    starts = [s for s in range(0, len(images), step) if len(images) - s >= 2]
    if not layers or not starts:
        return 0
    before = [(layer.moving_mean.numpy(), layer.moving_variance.numpy(), layer.momentum) for layer in layers]
    sums = [[0.0, 0.0] for _ in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0  # each forward pass leaves exactly its batch's statistics
        for start in starts:
            model(tf.constant(np.asarray(images[start : start + step], dtype=np.float32)), training=True)
            for acc, layer in zip(sums, layers):
                acc[0] += layer.moving_mean.numpy()
                acc[1] += layer.moving_variance.numpy()
        for acc, layer in zip(sums, layers):
            layer.moving_mean.assign(acc[0] / len(starts))
            layer.moving_variance.assign(acc[1] / len(starts))
    except BaseException:
        for layer, (mean, var, _) in zip(layers, before):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(var)
        raise
    finally:
        for layer, (_, _, momentum) in zip(layers, before):
            layer.momentum = momentum
    return len(layers)


def validation_loss_accuracy(model: keras.Model, y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``val_loss`` (compiled loss + regularisation, as Keras reports it) and ``val_accuracy``."""
    if len(probs) != len(y_true):
        raise DataError(f"{len(probs)} validation predictions for {len(y_true)} labels")
    onehot = np.eye(probs.shape[-1], dtype=np.float32)[y_true]
    loss_fn = getattr(model, "loss", None)
    loss = float(keras.ops.convert_to_numpy(loss_fn(onehot, probs))) if callable(loss_fn) else float("nan")
    if model.losses:
        loss += float(sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses))
    accuracy = float(np.mean(np.argmax(np.nan_to_num(probs, nan=0.0), axis=-1) == y_true))
    return {"val_loss": loss, "val_accuracy": accuracy}


def validation_scores(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``val_macro_f1`` and ``val_balanced_accuracy`` of class probabilities (NaN-safe)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    pred = np.argmax(np.nan_to_num(np.asarray(probs), nan=0.0), axis=-1)
    if len(pred) != len(y_true):
        raise DataError(f"{len(pred)} validation predictions for {len(y_true)} labels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return {
            "val_macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
            "val_balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        }


class NaNGuard(keras.callbacks.Callback):
    """Stops training when the loss becomes NaN/inf and remembers it (``diverged``).

    The running loss stays non-finite once it is, so checking every ``check_every``
    batches (and at each epoch end) catches every divergence without a device sync per
    batch.
    """

    def __init__(self, check_every: int = 10):
        super().__init__()
        self.check_every = max(1, int(check_every))
        self.diverged = False
        self.epoch = -1
        self.value = float("nan")
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if logs and (batch + 1) % self.check_every == 0:
            self._check(logs)

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            self._check(logs)

    def _check(self, logs):
        loss = logs.get("loss")
        if loss is None or self.diverged:
            return
        value = float(np.asarray(loss))
        if not math.isfinite(value):
            self.diverged, self.epoch, self.value = True, self._epoch, value
            self.model.stop_training = True


# --------------------------------------------------------------------------- fit / predict


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    *,
    y_val: np.ndarray,
    epochs: int,
    class_weight: dict | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    initial_epoch: int = 0,
) -> dict[str, list[float]]:
    """Train a compiled model and score the validation set after every epoch.

    ``initial_epoch`` continues an earlier ``fit`` (epoch numbers run on; ``epochs`` is the end).

    Runs ``[PreciseBatchNorm (if given), EpochScores, NaNGuard, *callbacks]`` so the validation
    pass sees re-estimated BatchNorm statistics and ``callbacks`` can monitor ``val_macro_f1`` /
    ``val_balanced_accuracy``.

    Returns:
        The history: ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
        ``val_macro_f1``, ``val_balanced_accuracy``, ``epoch_seconds`` (one float per
        epoch run) plus whatever ``callbacks`` add.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (training stopped there).
    """
    own = [cb for cb in callbacks if isinstance(cb, EpochScores)]
    scorer = own[0] if own else EpochScores(val_ds, y_val)
    guard = next((cb for cb in callbacks if isinstance(cb, NaNGuard)), None) or NaNGuard()
    precise = [cb for cb in callbacks if isinstance(cb, PreciseBatchNorm)]
    others = [cb for cb in callbacks if cb is not scorer and cb is not guard and cb not in precise]
    history = model.fit(
        train_ds,
        epochs=int(epochs),  # no validation_data: EpochScores scores the validation set once
        initial_epoch=int(initial_epoch),
        class_weight=class_weight,
        callbacks=[*precise, scorer, guard, *others],
        shuffle=False,  # the dataset shuffles itself
        verbose=verbose,
    )
    result = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    if guard.diverged:
        raise TrainingDiverged(
            f"training diverged: loss became {guard.value} in epoch {guard.epoch + 1}",
            epoch=guard.epoch,
            history=result,
        )
    return result


class StagedEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping that sees every stage of a staged fit as one training.

    Keras resets ``best`` at each ``fit``; this keeps the best value and weights across fits
    (only the patience counter restarts with a stage), so ``restore_best_weights`` restores the
    best epoch of all stages.
    """

    _seen = False

    def on_train_begin(self, logs=None):
        kept = (self.best, self.best_weights, self.best_epoch) if self._seen else None
        super().on_train_begin(logs)
        if kept is not None:
            self.best, self.best_weights, self.best_epoch = kept
        self._seen = True


class TimeLimit(keras.callbacks.Callback):
    """Stops training at an epoch boundary when the next epoch would not fit in ``budget``.

    ``budget`` is a :class:`medtune.planning.Budget`; the next epoch is expected to take as long
    as the longest one so far.
    """

    def __init__(self, budget):
        super().__init__()
        self.budget, self.longest, self.stopped_epoch = budget, 0.0, None
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.longest = max(self.longest, time.monotonic() - self._t0)
        if not self.budget.allows(self.longest):
            self.model.stop_training = True
            self.stopped_epoch = epoch
            log.info(
                "Time budget: stopping after epoch %d (%.0f s left, an epoch takes about %.0f s)",
                epoch + 1,
                self.budget.remaining() or 0.0,
                self.longest,
            )


class EpochCosine(keras.callbacks.Callback):
    """Cosine decay of the learning rate over the epochs ``[first, end)`` of one fit.

    The first ``warmup`` epochs rise linearly to ``base_lr`` (from ``base_lr / (warmup + 1)``);
    then the rate follows half a cosine from ``base_lr`` towards 0 at ``end``. Each epoch's logs
    carry ``learning_rate``.
    """

    def __init__(self, first: int, end: int, base_lr: float, warmup: int = 0):
        super().__init__()
        self.first, self.end, self.base_lr, self.warmup = int(first), int(end), float(base_lr), max(0, int(warmup))

    def rate(self, epoch: int) -> float:
        k = epoch - self.first
        if k < self.warmup:
            return self.base_lr * (k + 1) / (self.warmup + 1)
        span = max(1, self.end - self.first - self.warmup)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * (k - self.warmup) / span))

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = self.rate(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.rate(epoch)


LR_SCHEDULES = ("constant", "cosine")


def schedule_callbacks(
    params: Mapping[str, Any], first: int, end: int, base_lr: float, *, last_stage: bool = True
) -> list[keras.callbacks.Callback]:
    """The ``lr_schedule`` of ``params`` for one stage: [] (constant) or an :class:`EpochCosine`.

    Warm-up (``warmup_epochs``) belongs to the last stage, where the fine-tuning starts.

    Raises:
        ConfigError: an unknown schedule or a negative warm-up.
    """
    name = params.get("lr_schedule", "constant") or "constant"
    if name not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule: {name!r} is not {' or '.join(LR_SCHEDULES)}")
    warmup = params.get("warmup_epochs", 0) or 0
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup_epochs: needs an integer >= 0 (got {warmup!r})")
    if name == "constant":
        return []
    return [EpochCosine(first, end, base_lr, warmup if last_stage else 0)]


class _StageMarker(keras.callbacks.Callback):
    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = float(self.stage)


def fit_stages(
    model: keras.Model,
    params: Mapping[str, Any],
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    *,
    y_val: np.ndarray,
    epochs: int,
    class_weight: dict | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    stop_requested=None,
    on_stage=None,
    window: tuple[int, int] | None = None,
) -> dict[str, list[float]]:
    """:func:`fit` through the stages of ``models.transfer.stage_plan(params, epochs)``.

    The custom CNN has one stage (a plain :func:`fit`). A transfer model trains its head with
    the backbone frozen, then unfreezes the top ``fine_tune_layers`` and recompiles at the lower
    learning rate. Epoch numbers continue across stages, every epoch's logs carry ``stage``, and
    the same ``callbacks`` (pruning, early stopping, logging) and ``class_weight`` see both.
    Stage 2 is skipped when ``stop_requested()`` is true after stage 1 (a pruned trial).
    ``on_stage(stage, trainable_layers)`` is called as each stage starts. ``window=(first, end)``
    trains only the epochs ``[first, end)`` of the plan for ``epochs`` (a resolution rung: the
    stages, learning rates and schedules are those of the whole plan).

    Returns:
        The history of all stages, concatenated per key.
    """
    from medtune.models.transfer import set_stage, stage_plan

    history: dict[str, list[float]] = {}
    stages = stage_plan(params, int(epochs))
    first_epoch, end_epoch = window or (0, int(epochs))
    started = False
    for stage in stages:
        begin, end = max(stage.first_epoch, first_epoch), min(stage.end_epoch, end_epoch)
        if begin >= end:
            continue
        if started:
            if stop_requested is not None and stop_requested():
                break
            model.stop_training = False
        started = True
        trainable = set_stage(model, stage)
        if stage.number > 1 or not model.compiled:
            compile_model(model, {**params, "learning_rate": stage.learning_rate})
        if on_stage is not None:
            on_stage(stage, trainable)
        schedule = schedule_callbacks(
            params, stage.first_epoch, stage.end_epoch, stage.learning_rate, last_stage=stage is stages[-1]
        )
        part = fit(
            model,
            train_ds,
            val_ds,
            y_val=y_val,
            epochs=end,
            initial_epoch=begin,
            class_weight=class_weight,
            callbacks=[_StageMarker(stage.number), *schedule, *callbacks],
        )
        for key, values in part.items():
            history.setdefault(key, []).extend(values)
    return history


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``(N, n_classes)`` float32, read batch by batch (memmap-friendly)."""
    _check_images(x)
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    gather = _gatherer(x, sort=False)
    ds = _without_autotune_thread(tf.data.Dataset.range(len(x)).batch(int(batch_size)).map(gather).prefetch(AUTOTUNE))
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float32)


def release_model(model: keras.Model | None = None) -> None:
    """Free a finished trial's graph and memory (``clear_session`` + ``gc.collect``).

    ``model`` is accepted for readability at call sites; drop your own references to it
    too, or its weights stay alive.
    """
    del model
    _purge_custom_gradients()
    keras.backend.clear_session()
    gc.collect()


def _registered_gradients() -> set:
    try:
        from tensorflow.python.framework import ops

        return set(ops.gradient_registry._registry)
    except (ImportError, AttributeError):  # private API: without it, only the leak remains
        return set()


_BASELINE_GRADIENTS = _registered_gradients()


def _purge_custom_gradients() -> None:
    """Drop the ``CustomGradient-N`` entries each traced train step registers globally.

    Each holds the trial's whole graph alive, so memory grew ~29 MiB per trial even after
    ``clear_session`` (tensorflow#61791). Measured with the purge: +0.3 MiB per trial.
    """
    try:
        from tensorflow.python.framework import ops

        registry = ops.gradient_registry._registry
    except (ImportError, AttributeError):
        return
    for key in [k for k in registry if k.startswith("CustomGradient-") and k not in _BASELINE_GRADIENTS]:
        registry.pop(key, None)
