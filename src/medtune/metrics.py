"""Classification metrics on arrays: compute only, no plotting, no tracking.

Every function takes integer labels ``y_true`` of shape ``(N,)`` and, where it needs scores,
class probabilities ``proba`` of shape ``(N, n_classes)`` (rows are renormalised to sum to one).
Undefined per-class ratios (a class never predicted, or absent from ``y_true``) are 0.0, as with
scikit-learn's ``zero_division=0``; ROC AUC leaves classes absent from ``y_true`` out.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from medtune.errors import ConfigError

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./]")


def safe_key(name: str) -> str:
    """Turn a class name into an MLflow-metric-safe key fragment.

    Args:
        name: A class name such as ``"Acne and Rosacea Photos"``.

    Returns:
        The name with whitespace runs replaced by ``_`` and any character other than
        alphanumerics, ``_``, ``-``, ``.`` and ``/`` replaced by ``_``
        (``"Acne_and_Rosacea_Photos"``). Never empty.
    """
    key = _UNSAFE.sub("_", re.sub(r"\s+", "_", str(name).strip()))
    return key or "_"


def _labels(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D integer labels, got shape {y.shape}")
    return y.astype(np.int64)


def _proba(proba: np.ndarray, n: int | None = None) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-D (N, n_classes), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {n} labels")
    p = np.clip(p, 0.0, None)
    sums = p.sum(axis=1, keepdims=True)
    return np.divide(p, sums, out=np.full_like(p, 1.0 / p.shape[1]), where=sums > 0)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, shape (K, K), int64."""
    return skm.confusion_matrix(_labels(y_true), _labels(y_pred), labels=np.arange(n_classes)).astype(np.int64)


def _per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, specificity and F1 per class from a confusion matrix (0 if undefined)."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * precision * recall, precision + recall),
        "support": tp + fn,
    }


def _auc_per_class(y: np.ndarray, p: np.ndarray) -> dict[int, float]:
    """One-vs-rest AUC for each class with both positives and negatives in ``y``."""
    out: dict[int, float] = {}
    for c in range(p.shape[1]):
        pos = y == c
        if pos.any() and not pos.all():
            out[c] = float(skm.roc_auc_score(pos, p[:, c]))
    return out


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence.

    Confidences (the max probability) fall into ``n_bins`` equal-width bins ``(lo, hi]`` over
    [0, 1]; ECE is ``sum_b n_b / N * |accuracy_b - mean_confidence_b|``.
    """
    return reliability_bins(y_true, proba, n_bins)["ece"]


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> dict:
    """Per-bin accuracy and confidence for a reliability diagram.

    Returns:
        ``{"edges": (n_bins+1,), "accuracy": (n_bins,), "confidence": (n_bins,),
        "counts": (n_bins,) int64, "ece": float}``; accuracy and confidence are NaN in empty bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = _labels(y_true)
    p = _proba(proba, len(y))
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, acc_sum / counts, np.nan)
        confidence = np.where(counts > 0, conf_sum / counts, np.nan)
    n = max(len(y), 1)
    ece = float(np.abs(acc_sum - conf_sum).sum() / n)
    return {
        "edges": edges,
        "accuracy": accuracy,
        "confidence": confidence,
        "counts": counts,
        "ece": ece,
    }


def roc_curves(
    y_true: np.ndarray, proba: np.ndarray, n_classes: int
) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve per class: ``{class_index: (fpr, tpr, auc)}``.

    Classes with no positive (or no negative) sample in ``y_true`` are left out.
    """
    y = _labels(y_true)
    p = _proba(proba, len(y))
    if p.shape[1] != n_classes:
        raise ValueError(f"proba has {p.shape[1]} columns, expected {n_classes}")
    out = {}
    for c, auc in _auc_per_class(y, p).items():
        fpr, tpr, _ = skm.roc_curve(y == c, p[:, c])
        out[c] = (fpr, tpr, auc)
    return out


def classification_report_dict(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """scikit-learn's ``classification_report`` as a dict, every class listed."""
    return _report(y_true, y_pred, class_names, output_dict=True)


def classification_report_text(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> str:
    """scikit-learn's ``classification_report`` as text, every class listed."""
    return _report(y_true, y_pred, class_names, output_dict=False)


def _report(y_true, y_pred, class_names, output_dict):
    names = [str(c) for c in class_names]
    return skm.classification_report(
        _labels(y_true),
        _labels(y_pred),
        labels=np.arange(len(names)),
        target_names=names,
        zero_division=0,
        output_dict=output_dict,
        digits=4,
    )


SPECIFICITY_PCT = 90  # the operating point binary tasks also report


def sensitivity_at_specificity(positive: np.ndarray, score: np.ndarray, specificity: float) -> float:
    """The best sensitivity of a threshold on ``score`` whose specificity is at least ``specificity``
    (read off the ROC curve of these labels: a description of the test set, not a chosen threshold)."""
    fpr, tpr, _ = skm.roc_curve(np.asarray(positive, dtype=bool), score)
    allowed = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def operating_thresholds(y_true: np.ndarray, proba: np.ndarray, specificity: float) -> list[float] | None:
    """For a two-class task, per class ``c``: the lowest threshold on ``p(c)`` at which these images
    (validation, never test) keep a specificity of at least ``specificity``; None otherwise.

    A fixed operating point chosen before the test set is seen: :func:`operating_point_metrics`
    reports the sensitivity and specificity it really gives on other images.
    """
    y, p = _labels(y_true), np.asarray(proba, dtype=np.float64)
    if p.shape[1] != 2 or len(np.unique(y)) != 2:
        return None
    out = []
    for c in range(2):
        negatives = np.sort(p[y != c, c])[::-1]
        allowed = math.floor((1.0 - specificity) * len(negatives) + 1e-9)  # false positives it may make
        out.append(float(np.nextafter(negatives[allowed], np.inf)) if allowed < len(negatives) else 0.0)
    return out


def operating_point_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    thresholds: Sequence[float],
    class_names: Sequence[str],
    prefix: str = "test_",
) -> dict[str, float]:
    """Sensitivity and specificity of each class ``c`` predicted positive when ``p(c) >= thresholds[c]``."""
    y, p = _labels(y_true), np.asarray(proba, dtype=np.float64)
    out = {}
    for c, (name, threshold) in enumerate(zip(class_names, thresholds, strict=True)):
        called = p[:, c] >= threshold
        positive = y == c
        key = safe_key(str(name))
        out[f"{prefix}sensitivity_at_operating_point_{key}"] = float(called[positive].mean()) if positive.any() else 0.0
        out[f"{prefix}specificity_at_operating_point_{key}"] = (
            float((~called[~positive]).mean()) if (~positive).any() else 0.0
        )
    return out


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
    prefix: str = "test_",
) -> dict[str, float]:
    """All scalar metrics of a classifier on one split, as plain floats keyed for MLflow.

    Args:
        y_true: Integer labels, shape (N,).
        proba: Class probabilities, shape (N, len(class_names)).
        class_names: Names in label order; per-class keys use ``safe_key(name)``.
        prefix: Prepended to every key (``"test_"``, ``"val_"``).

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``weighted_f1``, ``roc_auc_macro``,
        ``roc_auc_weighted``, ``log_loss``, ``ece`` and, per class ``c``, ``precision_c``,
        ``recall_c`` (sensitivity), ``specificity_c``, ``f1_c`` and, for two classes,
        ``sensitivity_at_specificity_90_c`` (class ``c`` taken as positive); all prefixed. Balanced accuracy
        averages recall over the classes present in ``y_true``; macro/weighted F1 cover every
        class. AUCs are one-vs-rest over the classes present in ``y_true`` (NaN if fewer than
        two are present).
    """
    y = _labels(y_true)
    names = [str(c) for c in class_names]
    k = len(names)
    p = _proba(proba, len(y))
    if p.shape[1] != k:
        raise ValueError(f"proba has {p.shape[1]} columns but there are {k} class names")
    if len(y) == 0:
        raise ValueError("classification_metrics needs at least one sample")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}), got [{y.min()}, {y.max()}]")

    y_pred = p.argmax(axis=1)
    cm = confusion(y, y_pred, k)
    pc = _per_class(cm)
    support = pc["support"]
    present = support > 0
    missing = [names[i] for i in np.flatnonzero(~present)]

    out: dict[str, float] = {
        "accuracy": float(np.trace(cm) / cm.sum()),
        "balanced_accuracy": float(pc["recall"][present].mean()),
        "macro_f1": float(pc["f1"].mean()),
        "weighted_f1": float((pc["f1"] * support).sum() / support.sum()),
    }

    auc = _auc_per_class(y, p)
    if missing:
        logger.warning(
            "%d class(es) absent from y_true, left out of ROC AUC: %s",
            len(missing),
            ", ".join(missing),
        )
    if auc:
        cls = np.array(sorted(auc))
        vals = np.array([auc[c] for c in cls])
        out["roc_auc_macro"] = float(vals.mean())
        out["roc_auc_weighted"] = float((vals * support[cls]).sum() / support[cls].sum())
    else:
        logger.warning("fewer than two classes in y_true: ROC AUC is undefined (NaN)")
        out["roc_auc_macro"] = out["roc_auc_weighted"] = float("nan")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["log_loss"] = float(skm.log_loss(y, p, labels=np.arange(k)))
    out["ece"] = expected_calibration_error(y, p)

    keys = [safe_key(n) for n in names]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"class names collide once made metric-safe: {keys}")
    for i, key in enumerate(keys):
        for metric in ("precision", "recall", "specificity", "f1"):
            out[f"{metric}_{key}"] = float(pc[metric][i])
        if k == 2 and len(auc) == 2:  # a clinician reads a binary test at a stated specificity
            out[f"sensitivity_at_specificity_{SPECIFICITY_PCT}_{key}"] = sensitivity_at_specificity(
                y == i, p[:, i], SPECIFICITY_PCT / 100
            )

    return {f"{prefix}{k_}": float(v) for k_, v in out.items()}
