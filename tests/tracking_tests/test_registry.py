"""tracking.registry: the champion gate against a real Model Registry (SQLite store) with tiny logged models."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medtune import promotion
from medtune.tracking import registry
from tests.helpers import use_sqlite_store

pytestmark = pytest.mark.xdist_group("test_registry")  # one worker: the module's fixture built once


class Constant(mlflow.pyfunc.PythonModel):
    """A model whose only output is a fixed number (its 'test macro-F1', for the rescore callback)."""

    def __init__(self, value: float):
        self.value = value

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ARG002
        return pd.DataFrame({"score": [self.value] * len(model_input)})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store and registry for the module (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("registry")
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        experiment_id = use_sqlite_store(mp, root, "gate")
        yield MlflowClient(), experiment_id
    mlflow.set_tracking_uri(previous)


class Registry:
    """A client and the model name one test registers versions of."""

    def __init__(self, client: MlflowClient, name: str):
        self.client, self.name = client, name

    def register(self, value: float) -> str:
        """Log a tiny model in its own run and register it as a new version."""
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model", python_model=Constant(value), registered_model_name=self.name, pip_requirements=["mlflow"]
            )  # no requirement inference (slow)
        return str(info.registered_model_version)

    def aliases(self) -> dict[str, str]:
        return {alias: str(v) for alias, v in self.client.get_registered_model(self.name).aliases.items()}

    def tags(self, version: str) -> dict[str, str]:
        return self.client.get_model_version(self.name, version).tags


@pytest.fixture
def reg(store, request, monkeypatch):
    client, experiment_id = store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)  # where register() starts its runs; undone after
    return Registry(client, "gate-" + "".join(c if c.isalnum() else "-" for c in request.node.name))


def test_first_version_becomes_champion(reg):
    v1 = reg.register(0.5)
    decision = registry.promote(reg.name, v1, 0.5, "split-A", client=reg.client)
    assert decision.alias == promotion.CHAMPION and decision.champion_version is None
    assert reg.aliases() == {"champion": v1}
    assert str(reg.client.get_model_version_by_alias(reg.name, "champion").version) == v1  # an int in MLflow 3.17
    tags = reg.tags(v1)
    assert tags["medtune.decision"] == "champion"
    assert tags["medtune.test_macro_f1"] == "0.500000"
    assert tags["medtune.test_split"] == "split-A"
    assert tags["medtune.champion_before"] == "none"
    assert tags["medtune.decision_reason"] == "no champion yet"


def test_better_version_is_promoted_worse_and_marginal_ones_become_challengers(reg):
    v1, v2, v3, v4 = (reg.register(s) for s in (0.60, 0.70, 0.50, 0.72))
    registry.promote(reg.name, v1, 0.60, "split-A", client=reg.client, margin=0.05)

    better = registry.promote(reg.name, v2, 0.70, "split-A", client=reg.client, margin=0.05)
    assert better.alias == "champion" and better.champion_version == v1
    assert better.champion_score == pytest.approx(0.60)
    assert reg.aliases() == {"champion": v2}
    tags = reg.tags(v2)
    assert tags["medtune.decision"] == "champion"
    assert tags["medtune.test_macro_f1"] == "0.700000"  # both figures on the version
    assert tags["medtune.champion_score_before"] == "0.600000"
    assert tags["medtune.champion_before"] == v1

    worse = registry.promote(reg.name, v3, 0.50, "split-A", client=reg.client, margin=0.05)
    assert worse.alias == "challenger" and worse.champion_version == v2
    assert reg.aliases() == {"champion": v2, "challenger": v3}
    tags = reg.tags(v3)
    assert tags["medtune.decision"] == "challenger"
    assert tags["medtune.test_macro_f1"] == "0.500000"
    assert tags["medtune.champion_score_before"] == "0.700000"
    assert "does not beat" in tags["medtune.decision_reason"]

    # better, but not by more than the margin: challenger (and the alias moves to it)
    marginal = registry.promote(reg.name, v4, 0.72, "split-A", client=reg.client, margin=0.05)
    assert marginal.alias == "challenger"
    assert reg.aliases() == {"champion": v2, "challenger": v4}
    # a tie never replaces the champion
    v5 = reg.register(0.70)
    assert registry.promote(reg.name, v5, 0.70, "split-A", client=reg.client).alias == "challenger"


def test_champion_scored_on_other_test_images_is_rescored_on_these(reg):
    v1 = reg.register(0.55)  # on split B this champion scores .55, whatever its .90 on split A
    registry.promote(reg.name, v1, 0.90, "split-A", client=reg.client)
    v2 = reg.register(0.60)
    calls = []

    def rescore(uri: str) -> float:
        calls.append(uri)
        model = mlflow.pyfunc.load_model(uri)  # a real URI of the champion
        return float(model.predict(pd.DataFrame({"x": [0]}))["score"][0])

    decision = registry.promote(reg.name, v2, 0.60, "split-B", client=reg.client, rescore=rescore)
    assert calls == [f"models:/{reg.name}/{v1}"]
    assert decision.alias == "champion" and decision.champion_score == pytest.approx(0.55)
    assert reg.aliases() == {"champion": v2}
    old = reg.tags(v1)  # the champion's new score is kept for next time
    assert old["medtune.test_split"] == "split-B" and old["medtune.test_macro_f1"] == "0.550000"
    assert reg.tags(v2)["medtune.champion_score_before"] == "0.550000"

    # the next version on split B compares with the stored scores: no rescoring
    v3 = reg.register(0.58)
    decision = registry.promote(reg.name, v3, 0.58, "split-B", client=reg.client, rescore=rescore)
    assert len(calls) == 1 and decision.alias == "challenger"
    assert decision.champion_score == pytest.approx(0.60)


@pytest.mark.parametrize("rescore", [None, lambda uri: None, lambda uri: 1 / 0], ids=["none", "unscorable", "raises"])
def test_champion_that_cannot_be_scored_here_is_kept(reg, rescore):
    v1 = reg.register(0.5)
    registry.promote(reg.name, v1, 0.5, "split-A", client=reg.client)
    v2 = reg.register(0.9)
    decision = registry.promote(reg.name, v2, 0.9, "split-B", client=reg.client, rescore=rescore)
    assert decision.alias == "challenger" and decision.champion_score is None
    assert decision.reason == "champion could not be scored on this split"
    assert reg.aliases() == {"champion": v1, "challenger": v2}
    assert reg.tags(v2)["medtune.champion_score_before"] == ""


def test_deciding_again_for_the_champion_keeps_it(reg):
    v1 = reg.register(0.5)
    registry.promote(reg.name, v1, 0.5, "split-A", client=reg.client)
    again = registry.promote(reg.name, v1, 0.5, "split-A", client=reg.client)
    assert again.alias == "champion" and again.reason == "already the champion"
    assert reg.aliases() == {"champion": v1}


def test_registered_version_falls_back_to_the_registry():
    info = SimpleNamespace(registered_model_version=7)
    assert registry.registered_version("m", info, client=None) == "7"
    versions = [
        SimpleNamespace(version=1, source="models:/m-a", run_id="r1"),
        SimpleNamespace(version=2, source="models:/m-b", run_id="r2"),
    ]
    client = SimpleNamespace(search_model_versions=lambda flt: versions)
    info = SimpleNamespace(registered_model_version=None, model_uri="models:/m-b", run_id="r2", artifact_path="x")
    assert registry.registered_version("m", info, client=client) == "2"
    info = SimpleNamespace(registered_model_version=None, model_uri="models:/m-c", run_id="r3", artifact_path="x")
    with pytest.raises(RuntimeError, match="no version of m"):
        registry.registered_version("m", info, client=client)
