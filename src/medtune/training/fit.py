"""Fitting: one fit with validation scores, the stages of a transfer model, prediction, and the set-up
that trials and final training share."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from medtune.errors import TrainingDiverged
from medtune.training.callbacks import (
    AveragedWeights,
    EpochScores,
    NaNGuard,
    PreciseBatchNorm,
    StageMarker,
    averaging_optimizer,
    schedule_callbacks,
)
from medtune.training.compile import compile_model
from medtune.training.data import (
    balanced_class_weights,
    check_images,
    make_dataset,
)

log = logging.getLogger(__name__)

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

    Runs ``[AveragedWeights (with an ``ema`` optimiser), PreciseBatchNorm (if given), EpochScores,
    NaNGuard, *callbacks]`` so the validation pass sees the averaged weights and re-estimated
    BatchNorm statistics, and ``callbacks`` can monitor ``val_macro_f1`` / ``val_balanced_accuracy``.
    The average's momentum is lowered, if need be, so it spans at most about one epoch
    (``1 - 1 / steps per epoch``).

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
    optimizer = averaging_optimizer(model)
    steps = int(train_ds.cardinality())
    if optimizer is not None and steps > 0:  # the average spans at most about one epoch
        optimizer.ema_momentum = min(optimizer.ema_momentum, 1.0 - 1.0 / steps)
    averaged = [AveragedWeights()] if optimizer is not None else []
    history = model.fit(
        train_ds,
        epochs=int(epochs),  # no validation_data: EpochScores scores the validation set once
        initial_epoch=int(initial_epoch),
        class_weight=class_weight,
        callbacks=[*averaged, *precise, scorer, guard, *others],
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
    budget=None,
) -> dict[str, list[float]]:
    """:func:`fit` through the stages of ``models.transfer.stage_plan(params, epochs)``.

    The custom CNN has one stage (a plain :func:`fit`). A transfer model trains its head with
    the backbone frozen, then unfreezes the top ``fine_tune_layers`` and recompiles at the lower
    learning rate. Epoch numbers continue across stages, every epoch's logs carry ``stage``, and
    the same ``callbacks`` (pruning, early stopping, logging) and ``class_weight`` see both.
    Stage 2 is skipped when ``stop_requested()`` is true after stage 1 (a pruned trial).
    ``on_stage(stage, trainable_layers)`` is called as each stage starts. ``window=(first, end)``
    trains only the epochs ``[first, end)`` of the plan for ``epochs`` (a resolution rung: the
    stages, learning rates and schedules are those of the whole plan). With a ``budget``, the last
    stage's cosine schedule shortens itself to the time left (:class:`EpochCosine`).

    A pretrained backbone trains through :func:`medtune.models.folding.training_view` (its frozen
    BatchNorm folded into the convolutions: the same gradients, fewer passes over memory); the
    callbacks see that view, whose variables are ``model``'s.

    Returns:
        The history of all stages, concatenated per key.
    """
    from medtune.models.folding import training_view
    from medtune.models.transfer import set_stage, stage_plan

    history: dict[str, list[float]] = {}
    stages = stage_plan(params, int(epochs))
    first_epoch, end_epoch = window or (0, int(epochs))
    started = False
    net = training_view(model)  # frozen BatchNorm folded; trains model's own variables
    for stage in stages:
        begin, end = max(stage.first_epoch, first_epoch), min(stage.end_epoch, end_epoch)
        if begin >= end:
            continue
        if started:
            if stop_requested is not None and stop_requested():
                break
            net.stop_training = False
        started = True
        trainable = set_stage(model, stage)
        if stage.number > 1 or not net.compiled:
            compile_model(net, {**params, "learning_rate": stage.learning_rate})
        if on_stage is not None:
            on_stage(stage, trainable)
        schedule = schedule_callbacks(
            params,
            stage.first_epoch,
            stage.end_epoch,
            stage.learning_rate,
            last_stage=stage is stages[-1],
            budget=budget,
        )
        part = fit(
            net,
            train_ds,
            val_ds,
            y_val=y_val,
            epochs=end,
            initial_epoch=begin,
            class_weight=class_weight,
            callbacks=[StageMarker(stage.number), *schedule, *callbacks],
        )
        for key, values in part.items():
            history.setdefault(key, []).extend(values)
    return history


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``(N, n_classes)`` float32, read batch by batch (memmap-friendly).

    Plain slices into ``predict_on_batch``: a ``tf.numpy_function`` over ``x`` would keep every
    array it was ever given alive (the app and the served model call this again and again).
    """
    from medtune.models.folding import inference_view

    check_images(x)
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    model = inference_view(model)  # BatchNorm folded: the same probabilities, about twice as fast
    step = int(batch_size)
    parts = [
        np.asarray(model.predict_on_batch(np.asarray(x[i : i + step], dtype=np.float32)), dtype=np.float32)
        for i in range(0, len(x), step)
    ]
    return np.concatenate(parts)


@dataclass
class FitSetup:
    """What one fit needs, built the same way for a search trial and for final training."""

    model: keras.Model
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    class_weight: dict[int, float] | None
    callbacks: list[keras.callbacks.Callback]  # precise BatchNorm on the training images


def prepare_fit(
    params: Mapping[str, Any],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    weights: Mapping | None = None,
    class_weights: bool = False,
    compile: bool = True,
) -> FitSetup:
    """The datasets (shuffled and augmented by ``seed``), the model built from plain ``params`` and
    compiled (``compile=False`` for a network that continues another's compiled training), the
    balanced class weights when asked, and precise BatchNorm: the one recipe trials and final
    training share before :func:`fit_stages`.
    """
    from medtune.models import build_model

    batch = int(params.get("batch_size", 32))
    train_ds = make_dataset(
        x_train,
        y_train,
        n_classes,
        batch,
        training=True,
        augment=float(params.get("augment", 0.0)),
        mixup=float(params.get("mixup", 0.0)),
        seed=seed,
    )
    val_ds = make_dataset(x_val, y_val, n_classes, batch, training=False)
    model = build_model(params, tuple(x_train.shape[1:]), n_classes, weights=weights)
    if compile:
        model = compile_model(model, params)
    class_weight = balanced_class_weights(y_train, n_classes) if class_weights else None
    return FitSetup(model, train_ds, val_ds, class_weight, [PreciseBatchNorm(x_train, seed=seed)])
