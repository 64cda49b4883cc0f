"""tracking.search_recorder: trial runs under the search's parent run, one run per attempt."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medtune import tracking
from medtune.hpo.base import COMPLETE, TrialSummary
from medtune.hpo.trial import Probe, TrialResult
from medtune.tracking.search_recorder import SearchRecorder, trial_run_ids

OPTS = SimpleNamespace(dataset="d", engine="bayesian", trials=2, epochs=2, objective="val_macro_f1", rungs=None)


@pytest.fixture
def recorder(client, dataset):
    experiment_id = tracking.ensure_experiment(dataset)
    parent = tracking.RunLogger(client.create_run(experiment_id, run_name="search").info.run_id, client)
    return SearchRecorder(parent, experiment_id, OPTS, f"study-{dataset}", ["a", "b"])


def _result(value: float) -> TrialResult:
    rng = np.random.default_rng(0)
    probe = Probe(
        rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8), np.array([0, 1]), rng.random((2, 16, 16)), np.eye(2)
    )
    history = {"loss": [0.7, 0.5], "val_loss": [0.6, 0.5], "val_macro_f1": [0.5, value]}
    return TrialResult(history, value, 1, 1.0, confusion=np.array([[3, 1], [0, 4]]), probe=probe)


def test_an_interrupted_trial_keeps_its_killed_run_and_the_retry_gets_its_own(client, recorder):
    first = recorder.trial_started(1, {"learning_rate": 1e-3})
    recorder.epoch_end(first, 0, {"loss": 0.7, "val_macro_f1": 0.5})
    recorder.trial_finished(first, "FAILED", error=tracking.Interrupted("received signal 15"))

    retry = recorder.trial_started(1, {"learning_rate": 1e-3})  # keras-tuner runs trial 1 again
    recorder.trial_finished(retry, COMPLETE, result=_result(0.8))

    killed, finished = client.get_run(first.run_id), client.get_run(retry.run_id)
    assert retry.run_id != first.run_id
    assert (killed.info.status, killed.data.tags["medtune.trial_state"]) == ("KILLED", "KILLED")
    assert [m.value for m in client.get_metric_history(first.run_id, "train_loss")] == [0.7]  # only its own attempt
    assert (finished.info.status, finished.data.tags["medtune.attempt"]) == ("FINISHED", "2")
    assert finished.info.run_name == "trial-001-attempt2" and killed.data.tags["medtune.attempt"] == "1"
    artifacts = {f.path for f in client.list_artifacts(retry.run_id)}
    assert {"learning_curves.png", "confusion_matrix.png", "gradcam.png"} <= artifacts  # rendered from arrays

    summaries = trial_run_ids(
        [TrialSummary(1, COMPLETE, 0.8, {"learning_rate": 1e-3})],
        recorder.parent,
        recorder.experiment_id,
        recorder.study,
    )
    assert summaries[0].run_id == retry.run_id  # the study's trial is its finished attempt


def test_the_survivor_ends_an_abandoned_trials_run_killed(client, recorder):
    dead = recorder.trial_started(4, {"learning_rate": 1e-3})  # as the dead worker left it: RUNNING
    recorder.trial_abandoned(dead.run_id, "worker other-host:4321 stopped beating")
    got = client.get_run(dead.run_id)
    assert got.info.status == "KILLED"
    assert got.data.tags[tracking.TAG_ERROR] == "worker other-host:4321 stopped beating"
    assert client.get_run(recorder.parent.run_id).info.status == "RUNNING"  # the survivor's own search goes on
    recorder.trial_abandoned(dead.run_id, "again")  # an ended run is left as it is
    assert client.get_run(dead.run_id).data.tags[tracking.TAG_ERROR] == "worker other-host:4321 stopped beating"


def test_the_survivor_also_ends_the_dead_workers_search_run_and_its_launcher(client, recorder):
    launcher = client.create_run(client.create_experiment("launcher-exp-of-the-dead")).info.run_id
    other_search = client.create_run(
        recorder.experiment_id, run_name="search", tags={"medtune.launcher_run_id": launcher}
    ).info.run_id
    dead = client.create_run(recorder.experiment_id, tags={"mlflow.parentRunId": other_search}).info.run_id
    recorder.trial_abandoned(dead, "worker other-host:4321 stopped beating")
    for run_id in (dead, other_search, launcher):
        got = client.get_run(run_id)
        assert (got.info.status, got.data.tags[tracking.TAG_ERROR]) == (
            "KILLED",
            "worker other-host:4321 stopped beating",
        )
    assert client.get_run(recorder.parent.run_id).info.status == "RUNNING"
