"""The champion gate of the MLflow Model Registry.

A new version becomes ``@champion`` only if its test macro-F1 beats the current champion's on
the same test split by at least ``margin``; otherwise it becomes ``@challenger``. A champion
scored on another split is first re-scored on this one (the caller supplies ``rescore``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE_TAG = "medtune.test_macro_f1"
SPLIT_TAG = "medtune.test_split"


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


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def decide_and_promote(
    client: MlflowClient,
    name: str,
    version: str,
    score: float,
    split_id: str,
    *,
    margin: float = 0.0,
    rescore: Callable[[str], float | None] | None = None,
) -> Decision:
    """Compare ``version`` (scored ``score`` on ``split_id``) with the champion and set aliases.

    ``rescore(model_uri)`` gives the champion's test macro-F1 on ``split_id`` when its tags hold
    a score on another split (or none); returning None (or raising) means it cannot be scored
    there, and the new version becomes the challenger: a champion is never replaced blindly.
    """
    version = str(version)
    champion = current_champion(client, name)
    champ_score = None
    champ_version = None
    if champion is not None and str(champion.version) == version:  # decided before: keep it
        champ_score = _tag_score(champion.tags or {}, split_id)
        decision = Decision(CHAMPION, version, score, version, champ_score, margin, "already the champion")
        _tag_version(client, name, version, split_id, decision)
        return decision
    if champion is not None:
        champ_version = str(champion.version)
        champ_score = _tag_score(champion.tags or {}, split_id)
        if champ_score is None and rescore is not None:
            log.info("Champion v%s was scored on another split: re-scoring it on %s", champ_version, split_id)
            try:
                value = rescore(f"models:/{name}/{champ_version}")
            except Exception as exc:  # noqa: BLE001 - a broken old champion must not lose the new version
                log.warning("Could not re-score champion v%s: %s", champ_version, exc)
                value = None
            if value is not None and math.isfinite(float(value)):
                champ_score = float(value)
                client.set_model_version_tag(name, champ_version, SCORE_TAG, f"{champ_score:.6f}")
                client.set_model_version_tag(name, champ_version, SPLIT_TAG, split_id)
    if champ_version is None:
        alias, reason = CHAMPION, "no champion yet"
    elif champ_score is None:
        alias, reason = CHALLENGER, "champion could not be scored on this split"
    elif score > champ_score + margin:
        alias, reason = (
            CHAMPION,
            f"test macro-F1 {score:.4f} beats champion v{champ_version} {champ_score:.4f} by more than {margin}",
        )
    else:
        alias, reason = (
            CHALLENGER,
            f"test macro-F1 {score:.4f} does not beat champion v{champ_version} {champ_score:.4f} by more than {margin}",
        )
    decision = Decision(alias, version, score, champ_version, champ_score, margin, reason)
    _tag_version(client, name, version, split_id, decision)
    client.set_registered_model_alias(name, alias, version)
    log.info("Model %s v%s -> @%s (%s)", name, version, alias, reason)
    return decision


def _tag_score(tags: dict, split_id: str) -> float | None:
    """The test macro-F1 recorded in a version's tags, if it was scored on ``split_id``."""
    if tags.get(SPLIT_TAG) != split_id or SCORE_TAG not in tags:
        return None
    try:
        value = float(tags[SCORE_TAG])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _tag_version(client: MlflowClient, name: str, version: str, split_id: str, decision: Decision) -> None:
    client.set_model_version_tag(name, version, SPLIT_TAG, split_id)
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
