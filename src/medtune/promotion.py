"""The champion gate, as a pure decision (``tracking.registry.promote`` reads and writes the registry).

A new version becomes ``@champion`` only if its test macro-F1 beats the current champion's on
the same test split by more than ``margin``; otherwise it becomes ``@challenger``. A champion
that has no score on this split (and could not be re-scored on it) is never replaced blindly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE_TAG = "medtune.test_macro_f1"
SPLIT_TAG = "medtune.test_split"
ALREADY_CHAMPION = "already the champion"


@dataclass
class Decision:
    alias: str
    version: str
    score: float
    champion_version: str | None
    champion_score: float | None
    margin: float
    reason: str

    def tags(self) -> dict[str, str]:
        return {
            "medtune.decision": self.alias,
            "medtune.decision_reason": self.reason,
            "medtune.champion_before": self.champion_version or "none",
            "medtune.champion_score_before": "" if self.champion_score is None else f"{self.champion_score:.6f}",
            SCORE_TAG: f"{self.score:.6f}",
        }


def decide(
    version: str,
    score: float,
    champion_version: str | None,
    champion_score: float | None,
    margin: float = 0.0,
) -> Decision:
    """The alias ``version`` (test macro-F1 ``score``) gets against the champion's score on the same split."""
    version = str(version)
    if champion_version is not None and str(champion_version) == version:  # decided before: keep it
        return Decision(CHAMPION, version, score, version, champion_score, margin, ALREADY_CHAMPION)
    if champion_version is None:
        alias, reason = CHAMPION, "no champion yet"
    elif champion_score is None:
        alias, reason = CHALLENGER, "champion could not be scored on this split"
    elif score > champion_score + margin:
        alias = CHAMPION
        reason = (
            f"test macro-F1 {score:.4f} beats champion v{champion_version} {champion_score:.4f} by more than {margin}"
        )
    else:
        alias = CHALLENGER
        reason = (
            f"test macro-F1 {score:.4f} does not beat champion v{champion_version} {champion_score:.4f} "
            f"by more than {margin}"
        )
    return Decision(alias, version, score, champion_version, champion_score, margin, reason)


def score_on_split(tags: Mapping[str, str], split_id: str) -> float | None:
    """The test macro-F1 recorded in a version's tags, if it was scored on ``split_id``."""
    if tags.get(SPLIT_TAG) != split_id or SCORE_TAG not in tags:
        return None
    try:
        value = float(tags[SCORE_TAG])
    except ValueError:
        return None
    return value if math.isfinite(value) else None
