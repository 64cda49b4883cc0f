"""The MLflow tracking server goes away in the middle of a search, and comes back (issue 18).

A real search loop (Optuna, a stand-in trainer whose epochs take real time) records to a real
``mlflow server`` on loopback; the test kills the server after two trials and starts it again
(same port, same store) after two more. The search never stops: trials run untracked while the
server is away (the study keeps their results and says why they have no run), and are logged
once it answers again; no run is left RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from medtune import tracking
from medtune.hpo.base import SearchSettings
from medtune.tracking.search_recorder import SearchRecorder, trial_run_ids
from tests import helpers
from tests.search_tests.test_database_restart import slow_trainer
from tests.search_tests.test_postgres_workers import _free_port

pytestmark = pytest.mark.slow
OPTS = SimpleNamespace(dataset="d", engine="optuna", trials=6, epochs=3, objective="val_macro_f1", rungs=None)


class Server:
    """``mlflow server`` on a fixed port and store, stopped hard and started again by the test."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, _free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination"]
        cmd += [str(self.root / "artifacts"), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server's own output
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.root / "server.log").read_text()[
                -3000:
            ]
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "server"
    root.mkdir()
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while the server is away
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = Server(root)
    server.start()
    tracking.configure(server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.kill()


def _complete(storage: str) -> int:
    import optuna

    try:
        return sum(t.state.name == "COMPLETE" for t in optuna.load_study(study_name="away", storage=storage).trials)
    except KeyError:
        return 0


def test_a_search_goes_on_while_the_tracking_server_is_away_and_logs_its_trials_when_it_returns(
    server, tmp_path, monkeypatch
):
    import optuna
    from mlflow.tracking import MlflowClient

    from medtune.hpo import optuna_engine

    monkeypatch.setattr(optuna_engine, "train_trial", slow_trainer(0.4))
    experiment_id = tracking.ensure_experiment("away")
    client = MlflowClient()
    parent = tracking.RunLogger(
        client.create_run(experiment_id, tags={"medtune.objective": "val_macro_f1"}).info.run_id
    )
    recorder = SearchRecorder(parent, experiment_id, OPTS, "away", ["a", "b"])
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = SearchSettings(study="away", trials=6, epochs=3, seed=42, pruner="none", storage=storage)
    out, errors = [], []

    def search():
        try:
            out.extend(optuna_engine.run_search(helpers.two_param_space(tmp_path), None, cfg, recorder))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    optuna_engine.open_study(helpers.two_param_space(tmp_path), cfg)  # its tables, before the test watches them
    worker = threading.Thread(target=search)
    worker.start()
    for target, action in ((2, server.kill), (4, server.start)):
        deadline = time.monotonic() + 180
        while _complete(storage) < target:
            assert time.monotonic() < deadline and worker.is_alive(), errors
            time.sleep(0.1)
        action()
    worker.join(timeout=180)
    assert not worker.is_alive() and not errors, errors

    trials = optuna.load_study(study_name="away", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6  # the search never stopped, nothing lost
    untracked = [t.number for t in trials if "tracking_error" in t.user_attrs]
    assert untracked, "some trials ran while the server was away"
    summaries = trial_run_ids(out, parent, experiment_id, "away")  # the step does this at the end
    runs = {r.info.run_id: r for r in client.search_runs([experiment_id], max_results=100)}
    assert all(s.run_id in runs for s in summaries)  # every trial has a run now
    for s in summaries:
        run = runs[s.run_id]
        if s.number in untracked and "mlflow_run_id" not in trials[s.number].user_attrs:
            assert run.data.tags["medtune.logged_late"] == "true"
            assert run.data.metrics["best_val_macro_f1"] == pytest.approx(s.value)
    parent.end("FINISHED")
    still_running = [r.info.run_id for r in client.search_runs([experiment_id], "attributes.status = 'RUNNING'")]
    assert still_running == []
