"""tracking.registry: the champion gate against a real Model Registry (SQLite store) with tiny logged models."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medtune import promotion
from medtune.tracking import registry
from tests.helpers import use_sqlite_store

pytestmark = pytest.mark.xdist_group("test_registry")  # one worker: the module's fixture built once


class Fixed(mlflow.pyfunc.PythonModel):
    """A model whose output is a fixed list of classes: its predictions on the gate's test images."""

    def __init__(self, labels: list[int]):
        self.labels = labels

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ARG002
        return pd.DataFrame({"label": self.labels})


Y = np.repeat(np.arange(4), 50)  # 200 test images of 4 classes
CHAMPION_PRED = np.where(np.arange(200) % 5 == 0, (Y + 1) % 4, Y)  # 40 wrong


def better_by(k: int) -> np.ndarray:
    """The champion's predictions with ``k`` of its wrong answers made right."""
    pred = CHAMPION_PRED.copy()
    wrong = np.flatnonzero(pred != Y)[:k]
    pred[wrong] = Y[wrong]
    return pred


def predictions_of(uri: str) -> np.ndarray:
    """What the gate calls: the registered model's classes for the test images."""
    return mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"x": [0]}))["label"].to_numpy()


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

    def register(self, pred: np.ndarray) -> str:
        """Log a tiny model in its own run and register it as a new version."""
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=Fixed([int(v) for v in pred]),
                registered_model_name=self.name,
                pip_requirements=["mlflow"],
            )  # no requirement inference (slow)
        return str(info.registered_model_version)

    def promote(self, version: str, pred: np.ndarray, **kwargs):
        kwargs.setdefault("champion_predictions", predictions_of)
        return registry.promote(self.name, version, "split-A", Y, pred, 4, client=self.client, **kwargs)

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
    v1 = reg.register(CHAMPION_PRED)
    decision = reg.promote(v1, CHAMPION_PRED)
    assert decision.alias == promotion.CHAMPION and decision.champion_version is None
    assert reg.aliases() == {"champion": v1}
    assert str(reg.client.get_model_version_by_alias(reg.name, "champion").version) == v1  # an int in MLflow 3.17
    tags = reg.tags(v1)
    assert tags["medtune.decision"] == "champion"
    assert tags["medtune.test_macro_f1"] == f"{promotion.macro_f1(Y, CHAMPION_PRED, 4):.6f}"
    assert tags["medtune.test_split"] == "split-A"
    assert tags["medtune.champion_before"] == "none"
    assert tags["medtune.decision_reason"] == "no champion yet"


def test_better_by_one_image_stays_challenger_clearly_better_is_promoted_both_with_the_interval(reg):
    v1, v2, v3 = reg.register(CHAMPION_PRED), reg.register(better_by(1)), reg.register(better_by(30))
    reg.promote(v1, CHAMPION_PRED)

    noise = reg.promote(v2, better_by(1))
    assert noise.alias == "challenger" and noise.champion_version == v1 and noise.comparison.low <= 0
    assert noise.champion_score == pytest.approx(promotion.macro_f1(Y, CHAMPION_PRED, 4))
    assert reg.aliases() == {"champion": v1, "challenger": v2}
    tags = reg.tags(v2)
    assert tags["medtune.decision"] == "challenger" and "not better beyond noise" in tags["medtune.decision_reason"]
    assert tags["medtune.gate_interval"] == f"[{noise.comparison.low:.6f}, {noise.comparison.high:.6f}]"
    assert float(tags["medtune.gate_difference"]) > 0  # better, by one image

    clear = reg.promote(v3, better_by(30))
    assert clear.alias == "champion" and clear.comparison.low > 0
    assert reg.aliases() == {"champion": v3, "challenger": v2}
    tags = reg.tags(v3)
    assert tags["medtune.champion_before"] == v1 and tags["medtune.decision"] == "champion"
    assert tags["medtune.gate_interval"] == f"[{clear.comparison.low:.6f}, {clear.comparison.high:.6f}]"
    assert tags["medtune.champion_score_before"] == f"{noise.champion_score:.6f}"


def test_the_margin_is_an_extra_minimum(reg):
    v1, v2 = reg.register(CHAMPION_PRED), reg.register(better_by(30))
    reg.promote(v1, CHAMPION_PRED)
    decision = reg.promote(v2, better_by(30), margin=0.5)
    assert decision.alias == "challenger" and decision.comparison.low > 0 and "margin 0.5" in decision.reason


@pytest.mark.parametrize(
    "predict", [None, lambda uri: None, lambda uri: 1 / 0], ids=["no-callback", "unscorable", "raises"]
)
def test_champion_that_cannot_be_scored_here_is_kept(reg, predict):
    v1, v2 = reg.register(CHAMPION_PRED), reg.register(better_by(40))
    reg.promote(v1, CHAMPION_PRED)
    decision = reg.promote(v2, better_by(40), champion_predictions=predict)
    assert decision.alias == "challenger" and decision.champion_score is None
    assert decision.reason == "champion could not be scored on this split"
    assert reg.aliases() == {"champion": v1, "challenger": v2}
    assert reg.tags(v2)["medtune.champion_score_before"] == "" and reg.tags(v2)["medtune.gate_interval"] == ""


def test_deciding_again_for_the_champion_keeps_it(reg):
    v1 = reg.register(CHAMPION_PRED)
    reg.promote(v1, CHAMPION_PRED)
    again = reg.promote(v1, CHAMPION_PRED)
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
