"""promotion: the champion gate as a pure function of both models' predictions on the same images (no registry)."""

from __future__ import annotations

import numpy as np
import pytest

from medtune import metrics
from medtune.promotion import CHALLENGER, CHAMPION, compare, decide, macro_f1

N_CLASSES = 4


def labels_and_champion(n: int = 200, wrong: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels of ``n`` test images and a champion's predictions with ``wrong`` of them wrong."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(N_CLASSES), n // N_CLASSES)
    pred = y.copy()
    miss = rng.choice(n, wrong, replace=False)
    pred[miss] = (y[miss] + rng.integers(1, N_CLASSES, wrong)) % N_CLASSES
    return y, pred


def fixed(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``pred`` with ``k`` of its wrong answers made right."""
    out = pred.copy()
    wrong = np.flatnonzero(out != y)[:k]
    out[wrong] = y[wrong]
    return out


def test_macro_f1_is_the_logged_definition_also_with_a_class_never_predicted():
    y, pred = labels_and_champion()
    pred[pred == 3] = 2  # class 3 never predicted: its F1 is 0 and still counts
    proba = np.eye(N_CLASSES)[pred]
    logged = metrics.classification_metrics(y, proba, list("abcd"))["test_macro_f1"]
    assert macro_f1(y, pred, N_CLASSES) == pytest.approx(logged, abs=1e-12)
    weights = np.ones((3, len(y)))
    np.testing.assert_allclose(macro_f1(y, pred, N_CLASSES, weights), [logged] * 3)


def test_a_challenger_better_by_one_image_stays_challenger_and_the_interval_says_why():
    y, champion = labels_and_champion()
    comparison = compare(y, fixed(y, champion, 1), champion, N_CLASSES)
    assert comparison.difference > 0 and comparison.low <= 0 < comparison.high
    decision = decide("2", 0.81, "1", 0.80, 0.0, comparison)
    assert decision.alias == CHALLENGER and "not better beyond noise" in decision.reason
    tags = decision.tags()
    assert tags["medtune.gate_difference"] == f"{comparison.difference:.6f}"
    assert tags["medtune.gate_interval"] == f"[{comparison.low:.6f}, {comparison.high:.6f}]"
    assert "paired bootstrap" in tags["medtune.gate_test"]


def test_a_clearly_better_challenger_is_promoted_unless_the_margin_asks_for_more():
    y, champion = labels_and_champion()
    comparison = compare(y, fixed(y, champion, 30), champion, N_CLASSES)
    assert 0 < comparison.low < comparison.difference < comparison.high
    promoted = decide("2", 0.95, "1", 0.80, 0.0, comparison)
    assert promoted.alias == CHAMPION and "above the margin 0.0" in promoted.reason
    assert promoted.tags()["medtune.gate_interval"].startswith("[")
    assert decide("2", 0.95, "1", 0.80, comparison.high, comparison).alias == CHALLENGER  # margin: an extra minimum


def test_the_same_predictions_differ_by_exactly_nothing_and_resampling_repeats_for_a_seed():
    y, champion = labels_and_champion()
    same = compare(y, champion, champion, N_CLASSES)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    a, b = (compare(y, fixed(y, champion, 5), champion, N_CLASSES, seed=3) for _ in range(2))
    assert a == b


@pytest.mark.parametrize(
    ("champion_version", "champion_score", "alias", "reason"),
    [
        (None, None, CHAMPION, "no champion yet"),
        ("1", None, CHALLENGER, "champion could not be scored on this split"),
    ],
)
def test_without_a_champion_to_compare_with(champion_version, champion_score, alias, reason):
    decision = decide("2", 0.9, champion_version, champion_score)
    assert (decision.alias, decision.reason) == (alias, reason)
    assert decision.tags()["medtune.gate_interval"] == "" and decision.tags()["medtune.decision"] == alias


def test_the_champion_itself_stays_champion():
    decision = decide("3", 0.5, "3", 0.5)
    assert (decision.alias, decision.reason) == (CHAMPION, "already the champion")
