"""Callbacks: averaged weights, validation scores per epoch, precise BatchNorm, NaN guard, early
stopping across stages, time limit, learning-rate schedules."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from medtune.errors import ConfigError, DataError
from medtune.training.data import check_images

log = logging.getLogger(__name__)

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


class AveragedWeights(keras.callbacks.Callback):
    """Puts the optimiser's moving average of the weights (``use_ema``) in the model at each
    epoch's end, so every later callback (precise BatchNorm, validation scores, the best-epoch
    keeper) sees the averaged model, and training resumes from the raw weights next epoch.

    Keras swaps the average in only when ``fit`` ends (``finalize_variable_values``). Here the
    average stays in the optimiser as well, so that final swap gives the averaged model however
    training stops (last epoch, early stop, time limit or pruning).
    """

    def __init__(self):
        super().__init__()
        self._raw: list[np.ndarray] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._raw is not None:
            for var, value in zip(self._pairs()[0], self._raw):
                var.assign(value)
            self._raw = None

    def on_epoch_end(self, epoch, logs=None):
        variables, averages = self._pairs()
        self._raw = [v.numpy() for v in variables]
        for var, average in zip(variables, averages):
            var.assign(average)

    def _pairs(self):  # the private attributes keras.callbacks.SwapEMAWeights reads too
        optimizer = averaging_optimizer(self.model)
        return optimizer._trainable_variables, optimizer._model_variables_moving_average


def averaging_optimizer(model: keras.Model):
    """The model's optimiser if it keeps a moving average of the weights (also inside the loss
    scaling of mixed precision), else None."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if getattr(optimizer, "use_ema", False) else None


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
        check_images(x)
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


class BestWeights(keras.callbacks.Callback):
    """Keeps the best epoch's values of ``variables`` (``monitor``, higher is better) across every
    stage of a staged fit, and puts them back with :meth:`restore`.

    It holds the variables themselves, not ``self.model``'s weight list, so it is right whichever
    view of the network the epochs ran on (:func:`medtune.models.folding.training_view`).
    """

    def __init__(self, variables, monitor: str = "val_macro_f1"):
        super().__init__()
        self.variables, self.monitor = list(variables), monitor
        self.best, self.best_epoch, self.values = -math.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and math.isfinite(value) and value > self.best:
            self.best, self.best_epoch = float(value), epoch
            self.values = [v.numpy() for v in self.variables]

    def restore(self) -> bool:
        """Set the best epoch's values; False when no epoch was scored."""
        if self.values is None:
            return False
        for variable, value in zip(self.variables, self.values, strict=True):
            variable.assign(value)
        return True


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

    With a ``budget`` (a :class:`medtune.planning.Budget`), the schedule fits the time it has:
    from the second epoch on, when the epochs left at the slowest steady epoch so far would not
    fit in what remains, ``end`` moves earlier and training stops there, so the rate still
    decays to its low tail instead of a time limit cutting the cosine half-way.
    """

    def __init__(self, first: int, end: int, base_lr: float, warmup: int = 0, budget=None):
        super().__init__()
        self.first, self.end, self.base_lr, self.warmup = int(first), int(end), float(base_lr), max(0, int(warmup))
        self.planned_end, self.budget = self.end, budget
        self._t0, self._seconds = 0.0, []

    def rate(self, epoch: int) -> float:
        k = epoch - self.first
        if k < self.warmup:
            return self.base_lr * (k + 1) / (self.warmup + 1)
        span = max(1, self.end - self.first - self.warmup)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * (k - self.warmup) / span))

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.monotonic()
        self.model.optimizer.learning_rate = self.rate(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.rate(epoch)
        if self.budget is None:
            return
        self._seconds.append(time.monotonic() - self._t0)
        if len(self._seconds) > 1:  # the first epoch of a fit also traces its graphs
            self._fit_to_budget(epoch, max(self._seconds[1:]))
        if epoch + 1 >= self.end:
            self.model.stop_training = True

    def _fit_to_budget(self, epoch: int, epoch_s: float) -> None:
        fits = epoch + 1 + int(max(0.0, self.budget.remaining() or 0.0) // max(epoch_s, 1e-3))
        end = max(epoch + 1, min(self.planned_end, fits))
        if end < self.end:
            log.info(
                "Time budget: the cosine schedule now ends after epoch %d, not %d (%.0f s per epoch, %.0f s left)",
                end,
                self.planned_end,
                epoch_s,
                self.budget.remaining() or 0.0,
            )
            self.end = end


LR_SCHEDULES = ("constant", "cosine")


def schedule_callbacks(
    params: Mapping[str, Any], first: int, end: int, base_lr: float, *, last_stage: bool = True, budget=None
) -> list[keras.callbacks.Callback]:
    """The ``lr_schedule`` of ``params`` for one stage: [] (constant) or an :class:`EpochCosine`.

    Warm-up (``warmup_epochs``) and fitting the schedule to a ``budget`` belong to the last stage,
    where the fine-tuning starts.

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
    return [EpochCosine(first, end, base_lr, warmup if last_stage else 0, budget if last_stage else None)]


class StageMarker(keras.callbacks.Callback):
    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = float(self.stage)
