"""95 % bootstrap confidence intervals of a classifier's headline metrics. Compute only.

The test images are resampled with replacement within each true class (a stratified bootstrap:
every class keeps its count, so per-class ratios stay defined), the metrics are recomputed on
each resample with the definitions of :mod:`medtune.metrics`, and the interval is the 2.5th to
97.5th percentile of the resampled values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def headline_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """The headline metrics and per-class sensitivity / specificity, as :mod:`medtune.metrics` defines them.

    Numpy only (a bootstrap calls it a thousand times); a test checks it against
    :func:`medtune.metrics.classification_metrics`.

    Keys: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``roc_auc_macro``,
    ``sensitivity_<i>``, ``specificity_<i>`` (``i`` the class index).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, None)
    sums = p.sum(1, keepdims=True)  # rows renormalised, as medtune.metrics does
    p = np.divide(p, sums, out=np.full_like(p, 1.0 / n_classes), where=sums > 0)
    cm = np.bincount(y * n_classes + p.argmax(1), minlength=n_classes**2).reshape(n_classes, n_classes)
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    fp, fn = predicted - tp, support - tp
    tn = cm.sum() - tp - fp - fn
    recall = _ratio(tp, support)
    precision = _ratio(tp, predicted)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    aucs = [_auc(y == c, p[:, c]) for c in range(n_classes) if 0 < support[c] < len(y)]
    out = {
        "accuracy": float(tp.sum() / cm.sum()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1.mean()),
        "roc_auc_macro": float(np.mean(aucs)) if aucs else float("nan"),
    }
    specificity = _ratio(tn, tn + fp)
    for c in range(n_classes):
        out[f"sensitivity_{c}"] = float(recall[c])
        out[f"specificity_{c}"] = float(specificity[c])
    return out


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half): scikit-learn's value, faster."""
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def bootstrap_intervals(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    statistic: Callable[[np.ndarray, np.ndarray, int], dict[str, float]] = headline_scores,
) -> dict[str, Interval]:
    """Point estimate and 95 % stratified-bootstrap interval of every key ``statistic`` returns.

    Args:
        y_true: Integer labels (N,).
        proba: Class probabilities (N, K).
        class_names: K names (only their number is used).
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling (the same inputs and seed give the same intervals).

    Returns:
        ``{key: Interval(value, low, high)}``; NaN bounds where a statistic is undefined.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    k = len(class_names)
    point = statistic(y, p, k)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in range(k)]
    samples: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(members, size=len(members)) for members in by_class if len(members)])
        for key, value in statistic(y[idx], p[idx], k).items():
            samples[key].append(value)
    out = {}
    for key, value in point.items():
        values = np.asarray(samples[key], dtype=np.float64)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
        out[key] = Interval(float(value), float(low), float(high))
    return out
