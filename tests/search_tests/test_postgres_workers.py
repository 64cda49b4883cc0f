"""Two Optuna workers share one PostgreSQL study and one MLflow tracking server (issue 3, "Many machines").

Needs a PostgreSQL server: ``$MEDTUNE_TEST_POSTGRES_URL`` (default
``postgresql://medtune:medtune@localhost:5432/postgres``), a role allowed to create databases.
``.ci/run`` installs and starts one; elsewhere the test skips with the reason, unless
``MEDTUNE_TEST_POSTGRES_REQUIRED=1`` (set by CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.xdist_group("postgres"),
]  # one worker: one stops the server

DEFAULT_URL = "postgresql://medtune:medtune@localhost:5432/postgres"
BIN = Path(sys.executable).parent
STUDY = "two-workers"
TRIALS = 6


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"***@{host}:{parts.port}" if parts.port else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _unavailable(reason: str):
    if os.environ.get("MEDTUNE_TEST_POSTGRES_REQUIRED", "") not in ("", "0", "false"):
        pytest.fail(f"{reason} (MEDTUNE_TEST_POSTGRES_REQUIRED is set)")
    pytest.skip(reason)


@pytest.fixture
def postgres_url():
    """A fresh database on the test server (dropped afterwards); its SQLAlchemy-style URL."""
    psycopg2 = pytest.importorskip("psycopg2")
    admin = os.environ.get("MEDTUNE_TEST_POSTGRES_URL") or DEFAULT_URL
    try:
        conn = psycopg2.connect(admin, connect_timeout=3)
    except psycopg2.Error as exc:
        _unavailable(
            f"cannot connect to PostgreSQL at {_redact(admin)} within 3 s "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
            "start one as .ci/run does, or point MEDTUNE_TEST_POSTGRES_URL at one"
        )
    conn.autocommit = True
    name = f"medtune_test_{uuid.uuid4().hex[:12]}"
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    except psycopg2.Error as exc:
        conn.close()
        _unavailable(f"cannot create a test database on {_redact(admin)}: {str(exc).strip().splitlines()[0]}")
    conn.close()
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        conn = psycopg2.connect(admin, connect_timeout=30)  # a fresh one: the server may have restarted
        conn.autocommit = True
        with conn.cursor() as cur:
            try:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg2.Error:  # PostgreSQL < 13 has no FORCE
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # the group may hold children (uvicorn workers) even when the leader is gone
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no output)"


@pytest.fixture
def mlflow_server(project, tmp_path):
    """``mlflow server`` on a free local port (SQLite backend, proxied artifacts); its URL."""
    root = tmp_path / "mlflow-server"
    root.mkdir()
    port = _free_port()
    log_path = root / "server.log"
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**project.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {url}/health within 120 s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


def _trials(postgres_url: str):
    import optuna

    storage = optuna.storages.RDBStorage(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []
    finally:
        storage.engine.dispose()


def test_two_workers_share_a_postgres_study_and_one_survives_the_other_killed_mid_trial(
    project, postgres_url, mlflow_server
):
    """Two `medtune search` processes, one PostgreSQL study, one tracking server; once worker 1 has
    finished a trial, it is killed -9 in the middle of its next one. The survivor fails the orphaned
    trial, runs it again, ends the dead worker's runs KILLED and fills the budget exactly."""
    from optuna.trial import TrialState

    env = {
        **project.env,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MEDTUNE_SYNTHETIC": "24,32",  # small: two workers share 2 busy cores
        "MEDTUNE_HEARTBEAT": "2,60",  # a starved heartbeat must not fail the survivor's live trials
    }
    medtune = str(BIN / "medtune")
    split = subprocess.run(
        [medtune, "split", "--dataset", "synthetic", "--image-size", "32"],
        env=env,
        cwd=project.home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert split.returncode == 0, f"split failed:\n{split.stdout[-3000:]}\n{split.stderr[-4000:]}"

    search = [
        medtune,
        "search",
        "--dataset",
        "synthetic",
        "--engine",
        "optuna",
        "--storage",
        postgres_url,
        "--study",
        STUDY,
        "--trials",
        str(TRIALS),
        "--epochs",
        "2",
        "--image-size",
        "32",
    ]
    workers, logs = [], []
    try:
        for i in range(2):
            log_path = project.home / f"worker{i}.log"
            logs.append(log_path)
            with open(log_path, "w") as fh:
                workers.append(
                    subprocess.Popen(
                        search, env=env, cwd=project.home, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        survivor, victim = workers
        deadline = time.monotonic() + 300
        while True:  # worker 1 has finished a trial and is inside its next one, its run opened
            trials = [t for t in _trials(postgres_url) if t.user_attrs.get("pid") == victim.pid]
            doomed = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("mlflow_run_id")]
            if doomed and any(t.state == TrialState.COMPLETE for t in trials):
                break
            if victim.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker 1 never reached its second trial:\n{_tail(logs[1])}")
            time.sleep(0.3)
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait(30)
        try:
            survivor.wait(max(deadline + 180 - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the survivor still runs 180 s after the kill:\n{_tail(logs[0])}")
        recovered_s = time.monotonic() - killed_at
    finally:
        for proc in workers:
            _stop(proc, grace=10)
    assert survivor.returncode == 0, f"survivor exited {survivor.returncode}:\n{_tail(logs[0], 6000)}"
    dead_trial = doomed[0]
    print(f"worker {victim.pid} killed -9 in trial {dead_trial.number}; the survivor ended {recovered_s:.0f} s later")

    # ---- Optuna: the budget exact, the orphan failed and retried once with its params, nothing RUNNING
    trials = _trials(postgres_url)
    by_number = {t.number: t for t in trials}
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == TRIALS, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert by_number[dead_trial.number].state == TrialState.FAIL
    assert by_number[dead_trial.number].user_attrs["error"] == f"worker process {victim.pid} died"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == dead_trial.number]
    assert len(retries) == 1 and retries[0].params == dead_trial.params, [(t.number, t.user_attrs) for t in retries]
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED) and retries[0].user_attrs["pid"] == survivor.pid
    assert {t.user_attrs.get("pid") for t in counted} == {survivor.pid, victim.pid}, "both workers finished trials"
    # the random start-up trials (3 of 6) are seeded per trial number, so the two workers drew different ones
    startup = [tuple(sorted(t.params.items())) for t in counted if t.number < 3 and "retry_of" not in t.user_attrs]
    assert len(startup) == len(set(startup)), f"two workers drew the same start-up parameters: {startup}"

    # ---- MLflow: the dead worker's trial run and search run KILLED by the survivor, nothing RUNNING
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("medtune-synthetic")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [(r.info.run_id, r.data.tags.get("medtune.step")) for r in runs if r.info.status == "RUNNING"]
    parents = {
        int(r.data.tags["medtune.pid"]): r
        for r in runs
        if r.data.tags.get("medtune.step") == "search" and r.data.tags.get("medtune.study") == STUDY
    }
    assert set(parents) == {survivor.pid, victim.pid}
    reason = f"worker {socket.gethostname()}:{victim.pid} died"
    assert parents[survivor.pid].info.status == "FINISHED"
    assert (parents[victim.pid].info.status, parents[victim.pid].data.tags["medtune.error"]) == ("KILLED", reason)
    orphan = client.get_run(dead_trial.user_attrs["mlflow_run_id"])
    assert (orphan.info.status, orphan.data.tags["medtune.error"]) == ("KILLED", reason)

    children = [
        r for r in runs if r.data.tags.get("medtune.step") == "trial" and r.data.tags.get("medtune.study") == STUDY
    ]
    parent_pid = {r.info.run_id: pid for pid, r in parents.items()}
    for run in children:
        parent = run.data.tags.get("mlflow.parentRunId")
        assert parent in parent_pid, f"trial run {run.info.run_id} is not a child of a worker's search run"
        assert int(run.data.tags["medtune.pid"]) == parent_pid[parent], "a trial hangs under the other worker's parent"
    for t in counted:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert len({int(r.data.tags["medtune.trial"]) for r in children}) == len(children), "trial runs duplicated"
