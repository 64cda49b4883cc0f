"""The champion gate of the MLflow Model Registry.

A new version becomes ``@champion`` only if its test macro-F1 beats the current champion's on
the same test split by at least ``margin``; otherwise it becomes ``@challenger``. A champion
scored on another split is first re-scored on this one (the caller supplies ``rescore``).
"""

from __future__ import annotations

import logging
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
    rescore: Callable[[str], float] | None = None,
) -> Decision:
    """Compare ``version`` (scored ``score`` on ``split_id``) with the champion and set aliases."""
    champion = current_champion(client, name)
    champ_score = None
    champ_version = None
    if champion is not None and champion.version != str(version):
        champ_version = champion.version
        tags = champion.tags or {}
        if tags.get(SPLIT_TAG) == split_id and SCORE_TAG in tags:
            champ_score = float(tags[SCORE_TAG])
        elif rescore is not None:
            log.info("Champion v%s was scored on another split: re-scoring it on %s", champ_version, split_id)
            champ_score = float(rescore(f"models:/{name}/{champ_version}"))
            client.set_model_version_tag(name, champ_version, SCORE_TAG, f"{champ_score:.6f}")
            client.set_model_version_tag(name, champ_version, SPLIT_TAG, split_id)
    if champ_version is None:
        alias, reason = CHAMPION, "no champion yet"
    elif champ_score is None:
        alias, reason = CHALLENGER, "champion could not be scored on this split"
    elif score > champ_score + margin:
        alias, reason = CHAMPION, f"test macro-F1 {score:.4f} beats champion v{champ_version} {champ_score:.4f} by more than {margin}"
    else:
        alias, reason = CHALLENGER, f"test macro-F1 {score:.4f} does not beat champion v{champ_version} {champ_score:.4f} by more than {margin}"
    decision = Decision(alias, str(version), score, champ_version, champ_score, margin, reason)
    client.set_model_version_tag(name, str(version), SPLIT_TAG, split_id)
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, str(version), key, value)
    client.set_registered_model_alias(name, alias, str(version))
    log.info("Model %s v%s -> @%s (%s)", name, version, alias, reason)
    return decision
