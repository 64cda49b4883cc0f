"""promotion.decide: the champion gate as a pure function of the two scores (no registry)."""

from __future__ import annotations

import pytest

from medtune.promotion import CHALLENGER, CHAMPION, decide, score_on_split


@pytest.mark.parametrize(
    ("score", "champion_version", "champion_score", "margin", "alias", "reason"),
    [
        (0.5, None, None, 0.0, CHAMPION, "no champion yet"),
        (0.7, "1", 0.6, 0.05, CHAMPION, "beats champion v1 0.6000 by more than 0.05"),
        (0.64, "1", 0.6, 0.05, CHALLENGER, "does not beat champion v1"),  # better, but within the margin
        (0.6, "1", 0.6, 0.0, CHALLENGER, "does not beat"),  # a tie never replaces the champion
        (0.9, "1", None, 0.0, CHALLENGER, "champion could not be scored on this split"),
    ],
)
def test_decide(score, champion_version, champion_score, margin, alias, reason):
    decision = decide("2", score, champion_version, champion_score, margin)
    assert decision.alias == alias and reason in decision.reason
    assert (decision.version, decision.champion_version, decision.champion_score) == (
        "2",
        champion_version,
        champion_score,
    )
    assert decision.tags()["medtune.decision"] == alias


def test_the_champion_itself_stays_champion():
    decision = decide("3", 0.5, "3", 0.5)
    assert (decision.alias, decision.reason) == (CHAMPION, "already the champion")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"medtune.test_split": "A", "medtune.test_macro_f1": "0.75"}, 0.75),
        ({"medtune.test_split": "B", "medtune.test_macro_f1": "0.75"}, None),  # scored on other test images
        ({"medtune.test_split": "A"}, None),
        ({"medtune.test_split": "A", "medtune.test_macro_f1": "nan"}, None),
        ({"medtune.test_split": "A", "medtune.test_macro_f1": "x"}, None),
    ],
)
def test_score_on_split(tags, expected):
    assert score_on_split(tags, "A") == expected
