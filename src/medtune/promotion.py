"""The champion gate, as a pure decision (``tracking.registry.promote`` reads and writes the registry).

The new version and the champion are scored on the same test images. A paired bootstrap resamples those
images 2,000 times and scores both models on each resample; the new version becomes ``@champion`` only
when the lower end of the 90 % interval of the macro-F1 difference lies above ``margin`` (a one-sided test
at the 5 % level: better beyond sampling noise, and by more than the margin); otherwise ``@challenger``.
Macro-F1 is the figure the search optimises and the card leads with, so the test is on it (McNemar's
would test accuracy). A champion that cannot be scored on these images is never replaced blindly.

Test images that decide promotion are no longer an untouched test: the champion is the version they
favoured, so its test figures are optimistic by a little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE_TAG = "medtune.test_macro_f1"
SPLIT_TAG = "medtune.test_split"
ALREADY_CHAMPION = "already the champion"
RESAMPLES = 2000
TEST = (
    "paired bootstrap of the test macro-F1 difference (2,000 resamples); "
    "promoted when its 90 % interval lies above the margin"
)


@dataclass
class Comparison:
    difference: float  # new minus champion, test macro-F1 on the same images
    low: float  # the 90 % paired-bootstrap interval
    high: float


@dataclass
class Decision:
    alias: str
    version: str
    score: float
    champion_version: str | None
    champion_score: float | None
    margin: float
    reason: str
    comparison: Comparison | None = None

    def tags(self) -> dict[str, str]:
        c = self.comparison
        return {
            "medtune.decision": self.alias,
            "medtune.decision_reason": self.reason,
            "medtune.champion_before": self.champion_version or "none",
            "medtune.champion_score_before": "" if self.champion_score is None else f"{self.champion_score:.6f}",
            SCORE_TAG: f"{self.score:.6f}",
            "medtune.gate_difference": "" if c is None else f"{c.difference:.6f}",
            "medtune.gate_interval": "" if c is None else f"[{c.low:.6f}, {c.high:.6f}]",
            "medtune.gate_test": TEST,
        }


def macro_f1(y_true: np.ndarray, pred: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Macro-F1 as :mod:`medtune.metrics` defines it (every class, 0 where undefined), for each row of
    ``weights`` (how often each image counts, shape (B, N)); one value without ``weights``."""
    y, pred = np.asarray(y_true), np.asarray(pred)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    f1 = []
    for c in range(n_classes):
        tp, support, predicted = w @ ((y == c) & (pred == c)), w @ (y == c), w @ (pred == c)
        f1.append(np.divide(2 * tp, support + predicted, out=np.zeros(len(w)), where=support + predicted > 0))
    scores = np.mean(f1, axis=0)
    return scores if weights is not None else float(scores[0])


def compare(
    y_true: np.ndarray, pred: np.ndarray, champion_pred: np.ndarray, n_classes: int, *, seed: int = 0
) -> Comparison:
    """The paired bootstrap of ``macro_f1(pred) - macro_f1(champion_pred)`` on the same images."""
    n = len(y_true)
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES)
    diffs = macro_f1(y_true, pred, n_classes, weights) - macro_f1(y_true, champion_pred, n_classes, weights)
    low, high = np.percentile(diffs, [5.0, 95.0])
    point = macro_f1(y_true, pred, n_classes) - macro_f1(y_true, champion_pred, n_classes)
    return Comparison(float(point), float(low), float(high))


def decide(
    version: str,
    score: float,
    champion_version: str | None,
    champion_score: float | None,
    margin: float = 0.0,
    comparison: Comparison | None = None,
) -> Decision:
    """The alias ``version`` (test macro-F1 ``score``) gets against the champion, scored on the same images."""
    version = str(version)
    if champion_version is not None and str(champion_version) == version:  # decided before: keep it
        return Decision(CHAMPION, version, score, version, champion_score, margin, ALREADY_CHAMPION)
    if champion_version is None:
        alias, reason = CHAMPION, "no champion yet"
    elif champion_score is None or comparison is None:
        alias, reason = CHALLENGER, "champion could not be scored on this split"
    else:
        better = comparison.low > margin
        alias = CHAMPION if better else CHALLENGER
        reason = (
            f"test macro-F1 {score:.4f} against champion v{champion_version} {champion_score:.4f}: difference "
            f"{comparison.difference:+.4f}, 90 % interval [{comparison.low:+.4f}, {comparison.high:+.4f}] "
            + (f"above the margin {margin}" if better else f"reaches the margin {margin}: not better beyond noise")
        )
    return Decision(alias, version, score, champion_version, champion_score, margin, reason, comparison)
