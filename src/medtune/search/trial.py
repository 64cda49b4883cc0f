"""One trial: build a model from plain params, train it on cached arrays, score it.

Engine-agnostic and tracking-free: engines call :func:`train_trial` and hand the result to a
recorder. Nothing here imports optuna, keras-tuner or mlflow.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


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
class TrialResult:
    history: dict[str, list[float]] = field(default_factory=dict)
    value: float = float("nan")
    best_epoch: int = -1
    seconds: float = 0.0
    pruned: bool = False
    model: object | None = None
    val_proba: np.ndarray | None = None

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
) -> TrialResult:
    """Train one configuration for up to ``epochs`` epochs (both stages for a transfer backbone).

    Args:
        weights: backbone name -> resolved weights file (``medtune.models.weights``).
        on_epoch: called after every epoch with (epoch, logs); returning True stops the trial
            as pruned (the engine decides, e.g. Optuna's pruner).

    Raises:
        medtune.training.TrainingDiverged: the loss became NaN or infinite.
    """
    import keras

    from medtune import training
    from medtune.models import build_model

    direction = objective_direction(objective)
    keras.utils.set_random_seed(seed)
    n_classes = len(data.classes)
    batch_size = int(params.get("batch_size", 32))
    train_ds = training.make_dataset(
        data.x_train, data.y_train, n_classes, batch_size,
        training=True, augment=float(params.get("augment", 0.0)), seed=seed,
    )
    val_ds = training.make_dataset(data.x_val, data.y_val, n_classes, batch_size, training=False)
    model = training.compile_model(build_model(params, data.input_shape, n_classes, weights=weights), params)
    class_weight = training.balanced_class_weights(data.y_train, n_classes) if class_weights else None

    result = TrialResult(model=model)

    class _Hook(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if on_epoch is not None and on_epoch(epoch, dict(logs or {})):
                result.pruned = True
                self.model.stop_training = True

    scorer = training.EpochScores(val_ds, data.y_val)
    t0 = time.perf_counter()
    try:
        result.history = training.fit_stages(
            model, params, train_ds, val_ds, y_val=data.y_val, epochs=epochs,
            class_weight=class_weight, callbacks=[training.PreciseBatchNorm(data.x_train, seed=seed), scorer, _Hook()],
            stop_requested=lambda: result.pruned,
        )
    finally:
        result.seconds = time.perf_counter() - t0
    result.value, result.best_epoch = best_of(result.history.get(objective, []), direction)
    # The last epoch's validation pass already scored the final weights: no second pass.
    result.val_proba = scorer.last_proba if scorer.last_proba is not None else training.predict_proba(model, data.x_val)
    return result
