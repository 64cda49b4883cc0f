"""The study's PostgreSQL restarts in the middle of a search (issue 18).

A real search loop (Optuna on PostgreSQL, a stand-in trainer whose epochs take real time) runs
in a thread while the test stops and starts the PostgreSQL server. Needs a local cluster the test
may control with ``pg_ctlcluster``: ``$MEDTUNE_TEST_POSTGRES_CLUSTER`` ("15 main", set by
``.ci/run``); skipped otherwise (a failure when ``MEDTUNE_TEST_POSTGRES_REQUIRED=1``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

import pytest

from medtune.hpo.base import NullRecorder, SearchSettings
from medtune.hpo.trial import TrialResult
from tests import helpers
from tests.search_tests import test_postgres_workers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("postgres"),
]  # one worker: one stops the server
postgres_url = test_postgres_workers.postgres_url  # a fresh database on the test server


@pytest.fixture
def cluster():
    """Stop and start the local PostgreSQL cluster (always left running)."""
    name = os.environ.get("MEDTUNE_TEST_POSTGRES_CLUSTER", "").split()
    if len(name) != 2:
        test_postgres_workers._unavailable(
            "set MEDTUNE_TEST_POSTGRES_CLUSTER='<version> <name>' to let the test restart it"
        )

    def ctl(action: str) -> None:
        subprocess.run(["pg_ctlcluster", *name, action, *(["-m", "fast"] if action == "stop" else [])], check=True)

    try:
        yield ctl
    finally:
        subprocess.run(["pg_ctlcluster", *name, "start"], check=False, capture_output=True)
        subprocess.run(["pg_isready", "-h", "localhost", "-t", "30"], check=False, capture_output=True)


def slow_trainer(epoch_s: float):
    def train(params, data, *, epochs, seed, on_epoch, **kwargs):
        result = TrialResult()
        for epoch in range(epochs):
            time.sleep(epoch_s)
            result.history.setdefault("val_macro_f1", []).append(0.5 + 0.01 * seed)
            on_epoch(epoch, {"val_macro_f1": 0.5 + 0.01 * seed})
        result.value, result.best_epoch = 0.5 + 0.01 * seed, 0
        return result

    return train


def _counts(url: str) -> dict[str, int]:
    import optuna

    try:
        trials = optuna.load_study(
            study_name="restart", storage=url.replace("postgresql://", "postgresql+psycopg2://")
        ).trials
    except KeyError:  # the worker has not created the study yet
        return {}
    states = [t.state.name for t in trials]
    return {s: states.count(s) for s in set(states)}


def test_a_database_restart_mid_search_loses_and_repeats_no_trial(postgres_url, cluster, tmp_path, monkeypatch, caplog):
    from medtune.hpo import optuna_engine

    monkeypatch.setattr(optuna_engine, "train_trial", slow_trainer(0.3))
    space = helpers.two_param_space(tmp_path)
    cfg = SearchSettings(study="restart", trials=4, epochs=3, seed=42, pruner="none", storage=postgres_url)
    errors = []

    def search():
        try:
            optuna_engine.run_search(space, None, cfg, NullRecorder())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="medtune.hpo.reconnect")
    optuna_engine.open_study(space, cfg)  # the study's tables, before the test starts watching them
    worker = threading.Thread(target=search)
    worker.start()
    deadline = time.monotonic() + 120
    while _counts(postgres_url).get("COMPLETE", 0) < 2:  # two trials done, the third training
        assert time.monotonic() < deadline and worker.is_alive(), errors
        time.sleep(0.2)
    cluster("stop")
    time.sleep(6)  # the worker's reports and heartbeats fail meanwhile
    cluster("start")
    worker.join(timeout=180)
    assert not worker.is_alive() and not errors, errors
    assert _counts(postgres_url) == {"COMPLETE": 4}  # none lost, none repeated, nothing left RUNNING
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # one line per outage, not one per retry
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_database_that_stays_down_stops_the_search_with_one_line(postgres_url, cluster, tmp_path, monkeypatch):
    from medtune.hpo import optuna_engine
    from medtune.hpo.reconnect import StorageUnavailable
    from medtune.tracking import status_for

    monkeypatch.setattr(optuna_engine, "train_trial", slow_trainer(0.5))
    monkeypatch.setenv("MEDTUNE_DB_WAIT", "4")
    space = helpers.two_param_space(tmp_path)
    cfg = SearchSettings(study="restart", trials=50, epochs=3, seed=42, pruner="none", storage=postgres_url)
    stopper = threading.Timer(3.0, cluster, args=("stop",))  # while the first trials train
    stopper.start()
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        optuna_engine.run_search(space, None, cfg, NullRecorder())
    stopper.join()
    assert time.monotonic() - t0 < 60
    message = str(info.value)
    assert "\n" not in message and "unreachable for more than 4 s" in message and "password" not in message
    assert status_for(info.value) == "KILLED"  # its step and trial runs end KILLED, resumable
