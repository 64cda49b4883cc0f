"""One trial: build a model from plain params, train it on cached arrays, score it.

Engine-agnostic and tracking-free: engines call :func:`train_trial` and hand the result to a
recorder. Nothing here imports optuna, keras-tuner or mlflow.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

OBJECTIVES = {
    "val_macro_f1": "maximize",
    "val_accuracy": "maximize",
    "val_balanced_accuracy": "maximize",
    "val_loss": "minimize",
}


def objective_direction(objective: str) -> str:
    from medtune.errors import ConfigError

    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


@dataclass
class TrialData:
    """Cached arrays a search trains on (memory-mapped uint8 images, int labels)."""

    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    probe_index: np.ndarray  # fixed validation images for the Grad-CAM grid, the same for every trial
    _sizes: dict = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    def at(self, size: int) -> TrialData:
        """The same images resized to ``size`` px (made once per size, antialiased, uint8)."""
        if size == self.image_size:
            return self
        if size not in self._sizes:
            self._sizes[size] = TrialData(
                self.classes,
                resize_images(self.x_train, size),
                self.y_train,
                resize_images(self.x_val, size),
                self.y_val,
                self.probe_index,
            )
        return self._sizes[size]


def resize_images(x: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    """uint8 images (N, H, W, C) resized to (N, size, size, C)."""
    import tensorflow as tf

    out = np.empty((len(x), size, size, x.shape[-1]), dtype=np.uint8)
    for i in range(0, len(x), batch):
        part = tf.image.resize(np.asarray(x[i : i + batch], dtype=np.float32), (size, size), antialias=True)
        out[i : i + batch] = np.clip(np.round(part.numpy()), 0, 255).astype(np.uint8)
    return out


def rung_schedule(rungs: Sequence[int] | None, epochs: int) -> list[tuple[int | None, int, int]]:
    """``(image size, first epoch, end epoch)`` per rung: the epochs split evenly, the rest to the last rung.

    No rungs (or one): one window of all epochs at the data's own size (``None``).
    """
    sizes = list(rungs or [])
    if len(sizes) <= 1:
        return [(sizes[0] if sizes else None, 0, epochs)]
    if epochs < len(sizes):
        sizes = sizes[-epochs:]  # fewer epochs than rungs: the largest sizes
    per = epochs // len(sizes)
    out, first = [], 0
    for i, size in enumerate(sizes):
        end = epochs if i == len(sizes) - 1 else first + per
        out.append((int(size), first, end))
        first = end
    return out


def probe_indices(y_val: np.ndarray, n_classes: int, per_class: int = 2, seed: int = 0) -> np.ndarray:
    """A few validation images per class, chosen once by seed."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(n_classes):
        idx = np.flatnonzero(y_val == c)
        if len(idx):
            picks.extend(sorted(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return np.asarray(picks, dtype=int)


@dataclass
class Probe:
    """The fixed validation images of a search, with one trial's Grad-CAM heat-maps and probabilities."""

    images: np.ndarray
    labels: np.ndarray
    heatmaps: np.ndarray
    proba: np.ndarray


@dataclass
class TrialResult:
    history: dict[str, list[float]] = field(default_factory=dict)
    value: float = float("nan")
    best_epoch: int = -1
    seconds: float = 0.0
    pruned: bool = False
    model: object | None = None
    val_proba: np.ndarray | None = None
    confusion: np.ndarray | None = None  # validation counts, rows = true class
    probe: Probe | None = None  # Grad-CAM of the fixed probe images, at the last rung's size

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))


def best_of(values: list[float], direction: str) -> tuple[float, int]:
    clean = [(v, i) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if not clean:
        return float("nan"), -1
    pick = max if direction == "maximize" else min
    return pick(clean, key=lambda vi: vi[0])  # among equal values, the earliest epoch


def train_trial(
    params: Mapping,
    data: TrialData,
    *,
    epochs: int,
    objective: str = "val_macro_f1",
    class_weights: bool = True,
    seed: int = 0,
    on_epoch: Callable[[int, dict], bool] | None = None,
    weights: Mapping | None = None,
    rungs: Sequence[int] | None = None,
) -> TrialResult:
    """Train one configuration for up to ``epochs`` epochs (both stages for a transfer backbone).

    Args:
        weights: backbone name -> resolved weights file (``medtune.models.weights``).
        on_epoch: called after every epoch with (epoch, logs); returning True stops the trial
            as pruned (the engine decides, e.g. Optuna's pruner).
        rungs: image sizes, smallest first (the search's fidelity): the epochs split between them
            (:func:`rung_schedule`); at each new size the network is rebuilt and continues from
            its own weights (convolutions and global pooling take any size). Each epoch's logs
            carry ``image_size``.

    Raises:
        medtune.training.TrainingDiverged: the loss became NaN or infinite.
    """
    import keras

    from medtune import explain, metrics, training

    direction = objective_direction(objective)
    keras.utils.set_random_seed(seed)
    n_classes = len(data.classes)
    result = TrialResult()

    class _Hook(keras.callbacks.Callback):
        def __init__(self, size: int):
            super().__init__()
            self.size = size

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["image_size"] = float(self.size)
            if on_epoch is not None and on_epoch(epoch, dict(logs or {})):
                result.pruned = True
                self.model.stop_training = True

    t0 = time.perf_counter()
    model, scorer = None, None
    try:
        for size, first, end in rung_schedule(rungs, epochs):
            rung = data.at(size) if size else data
            setup = training.prepare_fit(
                params,
                rung.x_train,
                rung.y_train,
                rung.x_val,
                rung.y_val,
                n_classes,
                seed=seed + first,
                weights=weights,  # (pretrained: BatchNorm stays frozen)
                class_weights=class_weights,
                compile=first == 0,  # a later rung continues the first rung's compiled training
            )
            if model is not None:  # the next rung continues from this rung's weights
                setup.model.set_weights(model.get_weights())
                del model
            model = result.model = setup.model
            scorer = training.EpochScores(setup.val_ds, rung.y_val)
            part = training.fit_stages(
                model,
                params,
                setup.train_ds,
                setup.val_ds,
                y_val=rung.y_val,
                epochs=epochs,
                window=(first, end),
                class_weight=setup.class_weight,
                callbacks=[*setup.callbacks, scorer, _Hook(rung.image_size)],
                stop_requested=lambda: result.pruned,
            )
            for key, values in part.items():
                result.history.setdefault(key, []).extend(values)
            if result.pruned:
                break
    finally:
        result.seconds = time.perf_counter() - t0
    result.value, result.best_epoch = best_of(result.history.get(objective, []), direction)
    # The last epoch's validation pass already scored the final weights: no second pass.
    last = data.at(model.input_shape[1]) if rungs else data
    result.val_proba = scorer.last_proba if scorer.last_proba is not None else training.predict_proba(model, last.x_val)
    result.confusion = metrics.confusion(last.y_val, result.val_proba.argmax(1), n_classes)
    if len(data.probe_index) and result.history:
        images = np.asarray(last.x_val[data.probe_index])
        heatmaps, proba = explain.gradcam(model, images)
        result.probe = Probe(images, np.asarray(last.y_val[data.probe_index]), heatmaps, proba)
    return result
