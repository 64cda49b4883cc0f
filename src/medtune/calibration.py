"""Calibrated probabilities and prediction sets with a coverage guarantee.

Temperature scaling (Guo et al. 2017): one temperature ``T`` for the final model (one network, an ensemble or
its test-time flip alike) turns its probabilities ``p`` into ``softmax(log p / T)``; for one network that is
exactly ``softmax(logits / T)``. ``T`` minimises the negative log-likelihood on validation images, with Platt's
soft labels (so a fit set without errors cannot claim certainty); the predicted
class never changes, only how sure the model says it is. :func:`with_temperature` puts it inside the Keras
model, so the pyfunc, the app, Grad-CAM and every evaluation see calibrated probabilities.

Prediction sets: split-conformal with the score method (LAC; Sadinle, Lei and Wasserman 2019). An image's
non-conformity is ``1 - p(true class)``; on ``n`` calibration images the threshold ``q`` is the
``ceil((n + 1) level)``-th smallest score, and an image's set holds every class with ``p >= 1 - q``. For
exchangeable images the set holds the true class with probability at least ``level`` (at most
``level + 1 / (n + 1)`` without ties). Chosen over adaptive sets (APS) because among rules with this guarantee
it gives the smallest sets on average (what a clinician reads: "glioma or meningioma"), and the whole rule is one
number in the model's metadata. The top class is always in the set, so no set is empty (a larger set only
covers more).

The validation images are halved (stratified, seeded): the temperature is fitted on one half and the conformal
threshold computed on the other, with calibrated probabilities. Early stopping and the test-time-flip choice
also read the validation images, as is usual; the guarantee is only as good as that. With k-fold final training
(:mod:`medtune.training.folds`) the "validation images" are every pooled image, each predicted by the one member
that did not train on it; the ensemble served averages all members, so the guarantee there is approximate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medtune.errors import ConfigError
from medtune.metrics import SPECIFICITY_PCT, expected_calibration_error, operating_thresholds

__all__ = [
    "Calibration",
    "calibrate",
    "conformal_threshold",
    "expected_calibration_error",
    "fit_temperature",
    "prediction_set",
    "scale",
    "uncalibrated",
    "with_temperature",
]

BASE_NAME = "uncalibrated"
TEMPERATURE_LAYER = "temperature"
_TINY = 1e-12  # probabilities are clipped here before the log (the Keras layer does the same)


def scale(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row; ``scale(scale(p, T), 1 / T)`` gives ``p`` back."""
    z = np.log(np.clip(np.asarray(proba, dtype=np.float64), _TINY, 1.0)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _platt_targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Soft labels: ``(n_c + 1) / (n_c + 2)`` on an image's class ``c`` (``n_c`` of its images), the rest
    shared by the other classes (Platt 1999's targets for two classes).

    Plain labels let a fit set the model gets all right drive the temperature to its bound and every
    probability to 0 or 1 (seen on a binary task, 99.6 % accurate: T = 0.05, probabilities of 1e-30, the
    ranking lost to ties); n images cannot show a confidence above about ``1 - 1 / n``.
    """
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    true = (counts[y] + 1) / (counts[y] + 2)
    targets = np.repeat(((1 - true) / max(1, n_classes - 1))[:, None], n_classes, axis=1)
    targets[np.arange(len(y)), y] = true
    return targets


def _nll(proba: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    return float(-np.mean(np.sum(targets * np.log(np.clip(scale(proba, temperature), _TINY, 1.0)), axis=1)))


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood of labels ``y``
    (as :func:`_platt_targets`)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if not len(y):
        return 1.0
    targets = _platt_targets(y, np.asarray(proba).shape[1])
    best = minimize_scalar(lambda log_t: _nll(proba, targets, math.exp(log_t)), bounds=(math.log(0.05), math.log(20.0)))
    return float(math.exp(best.x))


def conformal_threshold(proba: np.ndarray, y: np.ndarray, level: float = 0.9) -> float:
    """The probability a class needs to enter a prediction set at coverage ``level`` (0: every class)."""
    check_level(level)
    y = np.asarray(y, dtype=np.int64)
    scores = np.sort(1.0 - np.asarray(proba, dtype=np.float64)[np.arange(len(y)), y])
    rank = math.ceil((len(y) + 1) * level)
    return 0.0 if rank > len(y) else float(1.0 - scores[rank - 1])


def check_level(level: float) -> None:
    if not 0.0 < float(level) < 1.0:
        raise ConfigError(f"conformal_level={level}: expected a coverage between 0 and 1, e.g. 0.9")


def prediction_set(proba: np.ndarray, classes: list[str], metadata: dict) -> list[list[str]]:
    """Per row, the classes whose probability reaches the model's conformal threshold, most probable first.

    Never empty: the top class is always in. A model without a threshold (logged before medtune had
    them) gives the top class alone.
    """
    p = np.atleast_2d(np.asarray(proba, dtype=np.float64))
    threshold = metadata.get("conformal_threshold")
    out = []
    for row, order in zip(p, np.argsort(-p, axis=1, kind="stable")):
        kept = [classes[j] for j in order if threshold is not None and row[j] >= threshold]
        out.append(kept or [classes[order[0]]])
    return out


def split_validation(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validation indices halved within each class: (to fit the temperature, to calibrate the sets)."""
    rng = np.random.default_rng(seed)
    fit, cal = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fit.append(idx[: len(idx) // 2])
        cal.append(idx[len(idx) // 2 :])
    return np.sort(np.concatenate(fit)).astype(int), np.sort(np.concatenate(cal)).astype(int)


@dataclass
class Calibration:
    temperature: float
    conformal_level: float
    conformal_threshold: float
    val_ece_before: float  # on the calibration half, which the temperature was not fitted on
    val_ece_after: float
    n_calibration: int  # validation images the threshold rests on
    # two classes: per class, the p(class) from which it is called positive at 90 % specificity on the
    # calibration half (metrics.operating_thresholds); None otherwise
    operating_thresholds: list[float] | None = None

    def metadata(self) -> dict:
        """What the served model needs (see :func:`medtune.serving.build_metadata`)."""
        keys = ("temperature", "conformal_level", "conformal_threshold", "operating_thresholds")
        return {k: getattr(self, k) for k in keys}

    def metrics(self) -> dict[str, float]:
        return {
            "temperature": self.temperature,
            "conformal_threshold": self.conformal_threshold,
            "val_ece_before_temperature": self.val_ece_before,
            "val_ece_after_temperature": self.val_ece_after,
        }


def calibrate(model, x_val, y_val: np.ndarray, *, enabled: bool = True, level: float = 0.9, seed: int = 0, proba=None):
    """The model with its fitted temperature inside (unchanged when ``enabled`` is False), and the fit.

    The conformal threshold is computed either way, on the calibrated probabilities. ``proba``: the
    probabilities of ``y_val``'s images when they are already known (out-of-fold predictions);
    otherwise ``model`` predicts ``x_val``.
    """
    from medtune.training import predict_proba

    check_level(level)
    y_val = np.asarray(y_val, dtype=np.int64)
    proba = predict_proba(model, x_val) if proba is None else np.asarray(proba)
    fit, cal = split_validation(y_val, seed)
    temperature = fit_temperature(proba[fit], y_val[fit]) if enabled else 1.0
    calibrated = scale(proba, temperature)
    result = Calibration(
        temperature,
        float(level),
        conformal_threshold(calibrated[cal], y_val[cal], level),
        expected_calibration_error(y_val[cal], proba[cal]),
        expected_calibration_error(y_val[cal], calibrated[cal]),
        len(cal),
        operating_thresholds(y_val[cal], calibrated[cal], SPECIFICITY_PCT / 100),
    )
    return (with_temperature(model, temperature) if temperature != 1.0 else model), result


def with_temperature(model, temperature: float):
    """``model`` with its probabilities tempered (:class:`medtune.models.layers.TemperatureScaling`), as one model.

    Layout: ``image`` -> ``uncalibrated`` (the wrapped model) -> ``temperature``; :func:`uncalibrated` finds
    the wrapped model back (also after loading), which is how Grad-CAM explains it.
    """
    import keras

    from medtune.models.layers import TemperatureScaling

    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    model.name = BASE_NAME
    outputs = TemperatureScaling(temperature, dtype="float32", name=TEMPERATURE_LAYER)(model(inputs))
    wrapped = keras.Model(inputs, outputs, name="temperature_scaled")
    wrapped.medtune_frozen_batchnorm = getattr(model, "medtune_frozen_batchnorm", False)
    return wrapped


def uncalibrated(model):
    """The model :func:`with_temperature` wrapped, or None for a model without a temperature."""
    names = [layer.name for layer in model.layers]
    if TEMPERATURE_LAYER not in names or BASE_NAME not in names:
        return None
    return model.get_layer(BASE_NAME)


def temperature_of(model) -> float:
    """The temperature inside ``model`` (1.0 when it has none)."""
    if uncalibrated(model) is None:
        return 1.0
    return float(model.get_layer(TEMPERATURE_LAYER).temperature)
