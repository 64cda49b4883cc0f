"""step_run: the run of one step, its status, tags, console, and the `mlflow run` launcher run."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from medtune import tracking
from medtune.tracking import console


def test_step_run_ends_finished_in_the_dataset_experiment_with_its_tags(client, dataset):
    with tracking.step_run(dataset, "split", run_name=f"split-{dataset}", tags={"extra": 3}) as run:
        assert mlflow.active_run().info.run_id == run.run_id  # fluent calls (log_input, models) use it
        run.metrics({"n_images": 12})
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == f"medtune-{dataset}"
    tags = got.data.tags
    assert (tags[tracking.TAG_STEP], tags[tracking.TAG_DATASET], tags["extra"]) == ("split", dataset, "3")
    assert (tags[tracking.TAG_PID], tags[tracking.TAG_HOST]) == (str(os.getpid()), socket.gethostname())
    assert tags["mlflow.runName"] == f"split-{dataset}"
    assert got.data.metrics == {"n_images": 12.0}
    assert mlflow.active_run() is None


def test_a_failing_step_ends_failed_with_its_error_in_one_line(client, dataset):
    with pytest.raises(ValueError), tracking.step_run(dataset, "train") as run:
        raise ValueError("no such backbone\nlong traceback text")
    got = client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[tracking.TAG_ERROR] == "ValueError: no such backbone"


def test_an_interrupted_step_ends_killed(client, dataset):
    with pytest.raises(tracking.Interrupted), tracking.step_run(dataset, "search") as run:
        raise tracking.Interrupted("received signal 15")
    assert client.get_run(run.run_id).info.status == "KILLED"
    assert tracking.run_status(run.run_id) == "KILLED"


@pytest.mark.parametrize("other_experiment_active", [False, True])
def test_the_launcher_run_in_the_step_experiment_is_adopted(client, dataset, monkeypatch, other_experiment_active):
    if other_experiment_active:  # e.g. a notebook that called set_experiment before
        mlflow.set_experiment(f"elsewhere-{dataset}")
    launcher = client.create_run(tracking.ensure_experiment(dataset))
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    exported = os.environ.get("MLFLOW_EXPERIMENT_ID")
    with tracking.step_run(dataset, "split", run_name="split-adopted") as run:
        assert run.run_id == launcher.info.run_id
    got = client.get_run(launcher.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["mlflow.runName"] == "split-adopted"
    assert got.data.tags[tracking.TAG_STEP] == "split"
    assert "MLFLOW_RUN_ID" not in os.environ  # a later step of `main` must not adopt an ended run
    assert os.environ.get("MLFLOW_EXPERIMENT_ID") == exported  # nothing new exported to child processes
    if other_experiment_active:  # the caller's active experiment is theirs again
        assert (
            mlflow.tracking.fluent._get_experiment_id()
            == client.get_experiment_by_name(f"elsewhere-{dataset}").experiment_id
        )


@pytest.mark.parametrize(("error", "status"), [(None, "FINISHED"), (RuntimeError("boom"), "FAILED")])
def test_a_launcher_run_elsewhere_is_linked_and_ends_with_the_step_status(client, dataset, monkeypatch, error, status):
    launcher = client.create_run(client.create_experiment(f"launcher-{dataset}"))
    launcher_id = launcher.info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher_id)
    with (
        pytest.raises(RuntimeError) if error else contextlib.nullcontext(),
        tracking.step_run(dataset, "evaluate") as run,
    ):
        if error:
            raise error
    assert run.run_id != launcher_id
    step, outer = client.get_run(run.run_id), client.get_run(launcher_id)
    assert step.data.tags["medtune.launcher_run_id"] == launcher_id
    assert outer.data.tags["medtune.step_run_id"] == run.run_id
    assert f"medtune-{dataset}" in outer.data.tags["medtune.note"]
    assert (step.info.status, outer.info.status) == (status, status)
    assert "MLFLOW_RUN_ID" not in os.environ


def test_an_unknown_launcher_id_is_ignored(client, dataset, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with tracking.step_run(dataset, "split") as run:
        pass
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and "medtune.launcher_run_id" not in got.data.tags
    assert "MLFLOW_RUN_ID" not in os.environ


def test_a_resume_filter_reopens_the_newest_ended_matching_run(client, dataset):
    mlflow.set_experiment(f"elsewhere-{dataset}")  # another experiment active in the process
    study = "tags.`medtune.study` = 's1'"
    with tracking.step_run(dataset, "search", tags={"medtune.study": "s1"}, resume_filter=study) as first:
        first.metrics({"trials": 1})
    with tracking.step_run(dataset, "search", tags={"medtune.study": "s1"}, resume_filter=study) as again:
        again.metrics({"trials": 2}, step=1)
    with tracking.step_run(
        dataset, "search", tags={"medtune.study": "s2"}, resume_filter="tags.`medtune.study` = 's2'"
    ) as other:
        pass
    assert again.run_id == first.run_id != other.run_id
    history = client.get_metric_history(first.run_id, "trials")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 2.0)]
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_an_active_run_of_a_previous_step_is_ended_first(client, dataset):
    previous = mlflow.start_run(experiment_id=tracking.ensure_experiment(dataset))
    with tracking.step_run(dataset, "train") as run:
        assert mlflow.active_run().info.run_id == run.run_id
    assert client.get_run(previous.info.run_id).info.status == "FINISHED"


def test_each_step_saves_its_own_share_of_the_console(client, dataset, monkeypatch, tmp_path):
    monkeypatch.setattr(console, "_CONSOLE", {})
    path = tracking.capture_console(logging.Formatter("%(message)s"))
    say = logging.getLogger("medtune.tests.console")
    try:
        say.warning("before any step")
        with tracking.step_run(dataset, "split") as first:
            say.warning("split line")
        with tracking.step_run(dataset, "search") as second:
            say.warning("search line")
    finally:
        logging.getLogger().removeHandler(console._CONSOLE["handler"])
        console._CONSOLE["handler"].close()
        path.unlink()
    first_log = tracking.download_artifact(first.run_id, "console.log", tmp_path / "1").read_text()
    second_log = tracking.download_artifact(second.run_id, "console.log", tmp_path / "2").read_text()
    assert "before any step" in first_log and "split line" in first_log and "search line" not in first_log
    assert "search line" in second_log and "split line" not in second_log


def test_two_workers_restarted_together_never_reopen_the_same_run(client, dataset, tmp_path):
    """Two real processes resume the same search at the same moment: one reopens the earlier run, one starts anew."""
    study = "tags.`medtune.study` = 'shared'"
    with tracking.step_run(dataset, "search", tags={"medtune.study": "shared"}, resume_filter=study) as earlier:
        pass
    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "from medtune import tracking\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "while not go.exists():\n"
        "    time.sleep(0.01)\n"
        f"with tracking.step_run({dataset!r}, 'search', tags={{'medtune.study': 'shared'}}, resume_filter={study!r}) as run:\n"
        "    pathlib.Path(sys.argv[1]).write_text(run.run_id)\n"
        "    time.sleep(3)\n"
    )
    outs = [tmp_path / f"worker{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out)]) for out in outs]
    time.sleep(4)  # both imported and waiting
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ids = sorted(out.read_text() for out in outs)
    assert len(set(ids)) == 2 and earlier.run_id in ids
    assert {tracking.run_status(i) for i in ids} == {"FINISHED"}
