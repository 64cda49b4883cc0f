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

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DEFAULT_URL = "postgresql://medtune:medtune@localhost:5432/postgres"
BIN = Path(sys.executable).parent
STUDY = "two-workers"
TRIALS = 4


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


def test_two_optuna_workers_share_postgres_study_and_tracking_server(project, postgres_url, mlflow_server):
    env = {
        **project.env,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MEDTUNE_SYNTHETIC": "24,32",  # small: two workers share 2 busy cores
        "MEDTUNE_HEARTBEAT": "2,60",  # nobody dies here: a starved heartbeat must not fail live trials
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
        "1",
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
                        search,
                        env=env,
                        cwd=project.home,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 480
        for proc, log_path in zip(workers, logs):
            try:
                proc.wait(max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {proc.pid} still running after 480 s:\n{_tail(log_path)}")
    finally:
        for proc in workers:
            _stop(proc, grace=10)
    for proc, log_path in zip(workers, logs):
        assert proc.returncode == 0, f"worker {proc.pid} exited {proc.returncode}:\n{_tail(log_path, 6000)}"
    pids = {proc.pid for proc in workers}

    # ---- Optuna: one study in PostgreSQL, no duplicated trial numbers, trials from both workers
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == TRIALS, [(t.number, t.state.name) for t in trials]  # exact across workers
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert {t.user_attrs.get("pid") for t in counted} == pids, "both workers must have run trials"
    # Each worker seeds its sampler per trial number, so concurrent workers do not repeat each other's draws.
    params = [tuple(sorted(t.params.items())) for t in counted]
    assert len(params) == len(set(params)), f"two trials got the same parameters: {params}"

    # ---- MLflow: one parent per worker, every trial a child of one of them, nothing left RUNNING
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("medtune-synthetic")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    parents = [
        r for r in runs if r.data.tags.get("medtune.step") == "search" and r.data.tags.get("medtune.study") == STUDY
    ]
    assert len(parents) == 2, [(r.info.run_id, r.data.tags.get("medtune.pid")) for r in parents]
    parent_pid = {r.info.run_id: int(r.data.tags["medtune.pid"]) for r in parents}
    assert set(parent_pid.values()) == pids
    assert all(r.info.status == "FINISHED" for r in parents)

    children = [
        r for r in runs if r.data.tags.get("medtune.step") == "trial" and r.data.tags.get("medtune.study") == STUDY
    ]
    child_numbers = [int(r.data.tags["medtune.trial"]) for r in children]
    assert len(child_numbers) == len(set(child_numbers)), f"trial runs duplicated: {sorted(child_numbers)}"
    assert set(child_numbers) == set(numbers)
    for run in children:
        parent = run.data.tags.get("mlflow.parentRunId")
        assert parent in parent_pid, f"trial run {run.info.run_id} is not a child of a worker's search run"
        assert int(run.data.tags["medtune.pid"]) == parent_pid[parent], "a trial hangs under the other worker's parent"
    by_number = {int(r.data.tags["medtune.trial"]): r.info.run_id for r in children}
    for t in counted:
        assert t.user_attrs.get("mlflow_run_id") == by_number[t.number]
