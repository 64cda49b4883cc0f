"""95 % intervals of a classifier's figures on its test images. Compute only.

Proportions (accuracy; per class sensitivity, specificity, PPV and NPV) get Wilson score intervals,
which stay honest at 0 and 1: a class with every image right gets ``[0.9, 1]``-like bounds, not
``[1, 1]``. The other figures (balanced accuracy, macro-F1, ROC-AUC, per-class F1 and AUC) get a
stratified bootstrap: the test images are resampled with replacement within each true class, the
figures recomputed with the definitions of :mod:`medtune.metrics`, and the interval is the 2.5th to
97.5th percentile. A bootstrap of zero width (every resample alike, e.g. every image right) would
claim certainty; it is widened to the Wilson interval of the same value over the images it rests on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def wilson(successes: float, n: float) -> tuple[float, float]:
    """The 95 % Wilson score interval of ``successes`` out of ``n`` (NaN bounds when ``n`` is 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p, z2 = successes / n, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if successes <= 0 else centre - half), (1.0 if successes >= n else centre + half)


def proportion(successes: float, n: float) -> Interval:
    """``successes / n`` (0 when ``n`` is 0, as :mod:`medtune.metrics` does) with its Wilson interval."""
    return Interval(successes / n if n > 0 else 0.0, *wilson(successes, n))


def headline_scores(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """The bootstrapped figures, as :mod:`medtune.metrics` defines them.

    Numpy only (a bootstrap calls it a thousand times); a test checks it against
    :func:`medtune.metrics.classification_metrics`.

    Keys: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``roc_auc_macro``, ``f1_<i>`` and
    ``auc_<i>`` (``i`` the class index; ``auc_<i>`` NaN when class ``i`` has no positive or no negative).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, None)
    sums = p.sum(1, keepdims=True)  # rows renormalised, as medtune.metrics does
    p = np.divide(p, sums, out=np.full_like(p, 1.0 / n_classes), where=sums > 0)
    cm = np.bincount(y * n_classes + p.argmax(1), minlength=n_classes**2).reshape(n_classes, n_classes)
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    aucs = [_auc(y == c, p[:, c]) if 0 < support[c] < len(y) else float("nan") for c in range(n_classes)]
    out = {
        "accuracy": float(tp.sum() / cm.sum()),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1.mean()),
        "roc_auc_macro": float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan"),
    }
    for c in range(n_classes):
        out[f"f1_{c}"] = float(f1[c])
        out[f"auc_{c}"] = aucs[c]
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
        ``{key: Interval(value, low, high)}``; NaN bounds where a statistic is undefined. A zero-width
        interval is widened to the Wilson interval of its value over the images of its class (``_<i>``
        keys) or all the images.
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
        if len(values) and low == high:
            suffix = key.rsplit("_", 1)[-1]
            n = len(by_class[int(suffix)]) if suffix.isdigit() else len(y)
            w_low, w_high = wilson(value * n, n)
            low, high = min(low, w_low), max(high, w_high)
        out[key] = Interval(float(value), float(low), float(high))
    return out
