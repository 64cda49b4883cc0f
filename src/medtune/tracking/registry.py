"""The MLflow Model Registry: versions, aliases, the champion gate's reads and writes, descriptions."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune import promotion
from medtune.errors import ConfigError
from medtune.promotion import CHAMPION, SPLIT_TAG, Decision

log = logging.getLogger(__name__)


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(
    name: str,
    version: str,
    split_id: str,
    y_true: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    *,
    margin: float = 0.0,
    champion_predictions: Callable[[str], np.ndarray | None] | None = None,
    client: MlflowClient | None = None,
) -> Decision:
    """Gate ``version`` (classes ``pred`` for the test images ``split_id``, labels ``y_true``) against the champion.

    ``champion_predictions(model_uri)`` gives the champion's classes for the same images in the same order;
    returning None (or raising) means it cannot be scored there, and the new version becomes the challenger
    (see :func:`medtune.promotion.decide`).
    """
    client = client or MlflowClient()
    version = str(version)
    champion = current_champion(client, name)
    champion_version = str(champion.version) if champion is not None else None
    score, champion_score, comparison = promotion.macro_f1(y_true, pred, n_classes), None, None
    if champion_version not in (None, version) and champion_predictions is not None:
        theirs = _champion_predictions(name, champion_version, champion_predictions)
        if theirs is not None:
            champion_score = promotion.macro_f1(y_true, theirs, n_classes)
            comparison = promotion.compare(y_true, pred, theirs, n_classes)
    decision = promotion.decide(version, score, champion_version, champion_score, margin, comparison)
    client.set_model_version_tag(name, version, SPLIT_TAG, split_id)
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    if decision.reason != promotion.ALREADY_CHAMPION:
        client.set_registered_model_alias(name, decision.alias, version)
        log.info("Model %s v%s -> @%s (%s)", name, version, decision.alias, decision.reason)
    return decision


def _champion_predictions(name: str, version: str, predict) -> np.ndarray | None:
    log.info("Scoring champion v%s on the same test images", version)
    try:
        return predict(f"models:/{name}/{version}")
    except Exception as exc:  # noqa: BLE001 - a broken old champion must not lose the new version
        log.warning("Could not score champion v%s: %s", version, exc)
        return None


def registered_version(name: str, info, client: MlflowClient | None = None) -> str:
    """The registry version ``log_model(registered_model_name=...)`` created for this model."""
    version = getattr(info, "registered_model_version", None)
    if version is not None:
        return str(version)
    # Older/other MLflow builds leave it unset: find the version whose source is this model.
    client = client or MlflowClient()
    candidates = [
        mv
        for mv in client.search_model_versions(f"name = '{name}'")
        if mv.source in (info.model_uri, getattr(info, "artifact_path", None)) or mv.run_id == info.run_id
    ]
    if not candidates:
        raise RuntimeError(f"model {info.model_uri} was logged but no version of {name} was registered")
    return str(max(int(mv.version) for mv in candidates))


def describe_version(name: str, version: str, description: str) -> None:
    MlflowClient().update_model_version(name, version, description=description)


def model_version(name: str, version: str):
    return MlflowClient().get_model_version(name, version)


def registry_tags(model_uri: str) -> dict[str, str]:
    """``medtune.model_name`` / ``medtune.model_version`` of a ``models:/name@alias`` or ``models:/name/N`` URI.

    An alias moves; the version it pointed at when the evaluation ran is what the run documents.
    """
    if not model_uri.startswith("models:/"):
        return {}
    rest = model_uri[len("models:/") :].strip("/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = MlflowClient().get_model_version_by_alias(name, alias).version
        else:
            name, _, version = rest.rpartition("/")
            if not name or not version.isdigit():
                return {}
    except MlflowException:
        return {}
    return {"medtune.model_name": name, "medtune.model_version": str(version)}


class RegistryReader:
    """Read-only view of the ``<prefix>*`` registered models (the demo's list of models)."""

    def __init__(self, prefix: str, client: MlflowClient | None = None):
        self.prefix = prefix
        self.client = client or MlflowClient()

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    def names(self) -> list[str]:
        return sorted(rm.name for rm in self.client.search_registered_models(f"name LIKE '{self.prefix}%'"))

    def aliases(self, name: str) -> dict[str, str]:
        return dict(self.client.get_registered_model(name).aliases or {})

    def versions(self, name: str) -> list[int]:
        """Version numbers, newest first."""
        return sorted((int(v.version) for v in self.client.search_model_versions(f"name = '{name}'")), reverse=True)

    def version(self, name: str, version: str | None = None, alias: str | None = None):
        """The model version (by number or alias), or a one-line :class:`ConfigError` naming it."""
        uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
        try:
            if alias:
                return self.client.get_model_version_by_alias(name, alias)
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise ConfigError(f"model={uri}: not in the registry at {self.tracking_uri}") from exc
