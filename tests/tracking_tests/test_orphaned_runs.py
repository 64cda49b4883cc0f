"""Runs orphaned by a killed process, and the launcher run set aside or linked."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from medtune import tracking


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_running_runs_of_dead_processes_on_this_host_are_ended_killed(client, dataset):
    experiment_id = tracking.ensure_experiment(dataset)
    host, dead = socket.gethostname(), _dead_pid()

    def running(pid, run_host=host):
        tags = {tracking.TAG_HOST: run_host, **({tracking.TAG_PID: str(pid)} if pid is not None else {})}
        return client.create_run(experiment_id, tags=tags).info.run_id

    orphan = running(dead)
    alive = running(os.getppid())  # the process that started pytest
    mine = running(os.getpid())
    elsewhere = running(dead, run_host=f"not-{host}")
    no_pid = running(None)
    ended = client.create_run(experiment_id, tags={tracking.TAG_HOST: host, tracking.TAG_PID: str(dead)}).info.run_id
    client.set_terminated(ended, "FINISHED")

    assert tracking.end_orphaned_runs(experiment_id) == [orphan]
    assert tracking.run_status(orphan) == "KILLED"
    assert client.get_run(orphan).data.tags[tracking.TAG_ERROR] == f"process {dead} died without ending this run"
    for run_id in (alive, mine, elsewhere, no_pid):
        assert tracking.run_status(run_id) == "RUNNING"
    assert tracking.run_status(ended) == "FINISHED"


def test_a_step_run_repairs_orphans_before_it_starts(client, dataset):
    experiment_id = tracking.ensure_experiment(dataset)
    tags = {tracking.TAG_HOST: socket.gethostname(), tracking.TAG_PID: str(_dead_pid())}
    orphan = client.create_run(experiment_id, tags=tags).info.run_id
    with tracking.step_run(dataset, "split"):
        assert tracking.run_status(orphan) == "KILLED"


def test_the_launcher_can_be_set_aside_for_a_nested_step(monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    with tracking.launcher_set_aside() as launcher_id:
        assert launcher_id == "abc" and "MLFLOW_RUN_ID" not in os.environ
    assert os.environ["MLFLOW_RUN_ID"] == "abc"
    monkeypatch.delenv("MLFLOW_RUN_ID")
    with tracking.launcher_set_aside() as launcher_id:
        assert launcher_id is None
    assert "MLFLOW_RUN_ID" not in os.environ


def test_a_reused_step_run_is_linked_from_the_launcher(client, dataset, monkeypatch):
    experiment_id = tracking.ensure_experiment(dataset)
    reused = client.create_run(experiment_id).info.run_id
    launcher = client.create_run(experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    tracking.link_launcher(reused, "reused the finished split run")
    tags = client.get_run(launcher).data.tags
    assert (tags["medtune.step_run_id"], tags["medtune.note"]) == (reused, "reused the finished split run")
    assert "MLFLOW_RUN_ID" not in os.environ
    tracking.link_launcher(reused, "no launcher: nothing to do")  # without MLFLOW_RUN_ID it is a no-op
    assert client.get_run(launcher).data.tags["medtune.note"] == "reused the finished split run"


def test_kill_9_of_a_step_leaves_neither_its_run_nor_the_linked_launcher_running(client, dataset, store, tmp_path):
    """A real process opens a step run linked to an `mlflow run` launcher run elsewhere, and is killed -9."""
    launcher = client.create_run(client.create_experiment(f"launcher-{dataset}")).info.run_id
    ready = tmp_path / "ready"
    script = (
        "import pathlib, sys, time\n"
        "from medtune import tracking\n"
        f"with tracking.step_run({dataset!r}, 'search') as run:\n"
        f"    pathlib.Path({str(ready)!r}).write_text(run.run_id)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "MLFLOW_RUN_ID": launcher}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        for _ in range(600):
            if ready.exists() and ready.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        step = ready.read_text()
    finally:
        proc.kill()
        proc.wait()
    assert (tracking.run_status(step), tracking.run_status(launcher)) == ("RUNNING", "RUNNING")

    with tracking.step_run(dataset, "search"):  # the next start of any step of the dataset repairs both
        pass
    for run_id in (step, launcher):
        got = client.get_run(run_id)
        assert got.info.status == "KILLED"
        assert got.data.tags[tracking.TAG_ERROR] == f"process {proc.pid} died without ending this run"
