"""Never lose work: SIGTERM and kill -9 in the middle of a trial, then the same command again.

The search runs as a real `medtune search` process (started like `Project.medtune` does) with a
budget of 2 trials; the test watches the SQLite MLflow store until the first trial has completed
and the second is training (an epoch logged), then signals the process. The re-run must add
exactly one completed trial, without repeating or duplicating the first.
"""

from __future__ import annotations

import signal

import pytest


def _study(project, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{project.home / 'optuna.db'}")


def _args(study: str) -> tuple[str, ...]:
    return (
        "search",
        "--dataset",
        "synthetic",
        "--image-size",
        "32",
        "--trials",
        "2",
        "--epochs",
        "2",
        "--study",
        study,
    )


def _second_trial_training(store, study: str):
    """Trial 0 FINISHED and trial 1 RUNNING with its first epoch logged."""
    runs = {int(r.data.tags["medtune.trial"]): r for r in store.trials(study)}
    first, second = runs.get(0), runs.get(1)
    if first is None or second is None or first.info.status != "FINISHED":
        return None
    return second if second.info.status == "RUNNING" and "val_loss" in second.data.metrics else None


def _check_completed(project, store, study_name: str, parent_id: str) -> None:
    """After the re-run: the budget is complete, one FINISHED run per completed trial, nothing RUNNING."""
    study = _study(project, study_name)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2, [(t.number, t.state.name) for t in study.trials]
    assert complete[0].number == 0, "the trial completed before the interruption is kept, not repeated"
    runs = store.trials(study_name)
    numbers = [int(r.data.tags["medtune.trial"]) for r in runs]
    assert len(numbers) == len(set(numbers)), f"a trial number has two MLflow runs:\n{store.describe()}"
    by_number = {int(r.data.tags["medtune.trial"]): r for r in runs}
    for t in complete:
        run = by_number[t.number]
        assert run.info.status == "FINISHED" and run.data.tags["medtune.trial_state"] == "COMPLETE"
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == parent_id
    [parent] = store.searches(study_name)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_done"] == 2
    assert not store.running(), store.describe()


@pytest.mark.slow
def test_sigterm_ends_runs_killed_and_the_search_resumes(project, store, background):
    bg = background(*_args("term"))
    training = bg.wait_for("trial 1 training", lambda: _second_trial_training(store, "term"))
    first = store.trials("term")[0]
    rc = bg.signal(signal.SIGTERM)
    output = bg.output()

    assert rc == 130, output[-3000:]
    assert "medtune: interrupted" in output and "Traceback" not in output, output[-3000:]
    assert not store.running(), store.describe()
    killed = store.client.get_run(training.info.run_id)
    assert killed.info.status == "KILLED", store.describe()
    assert killed.data.tags["medtune.trial_state"] == "KILLED"
    [parent] = store.searches("term")
    assert parent.info.status == "KILLED"
    assert "Interrupted" in parent.data.tags["medtune.error"]
    assert [t.state.name for t in _study(project, "term").trials] == ["COMPLETE", "FAIL"]  # FAIL: not in the budget

    proc = project.medtune(*_args("term"))
    assert "trial 2 started (1 of 2 done" in proc.stderr, proc.stderr[-3000:]
    _check_completed(project, store, "term", parent.info.run_id)
    assert store.client.get_run(killed.info.run_id).info.status == "KILLED"  # history kept as it was
    assert store.client.get_run(first.info.run_id).info.end_time == first.info.end_time  # not touched


@pytest.mark.slow
def test_kill_9_orphaned_trial_is_failed_and_retried(project, store, background):
    bg = background(*_args("k9"))
    training = bg.wait_for("trial 1 training", lambda: _second_trial_training(store, "k9"))
    assert bg.signal(signal.SIGKILL) == -signal.SIGKILL
    orphan_id = training.info.run_id
    number = int(training.data.tags["medtune.trial"])
    assert store.client.get_run(orphan_id).info.status == "RUNNING"  # nobody could end it
    [parent] = store.searches("k9")

    proc = project.medtune(*_args("k9"))
    assert "orphaned" in proc.stderr, proc.stderr[-3000:]

    orphan = store.client.get_run(orphan_id)
    assert orphan.info.status == "KILLED", store.describe()
    assert f"process {bg.pid} died" in orphan.data.tags["medtune.error"]
    study = _study(project, "k9")
    failed = study.trials[number]
    assert failed.state.name == "FAIL"
    retries = [
        t
        for t in study.trials
        if t.user_attrs.get("retry_of") == number or t.system_attrs.get("failed_trial") == number
    ]
    assert len(retries) == 1, [(t.number, t.state.name, t.user_attrs, t.system_attrs) for t in study.trials]
    assert retries[0].params == failed.params and retries[0].state.name == "COMPLETE"
    _check_completed(project, store, "k9", parent.info.run_id)


@pytest.mark.slow
def test_kill_9_of_a_keras_tuner_search_keeps_the_same_record_as_optuna(project, store, background):
    """keras-tuner retries an interrupted trial under its own number: the killed attempt keeps its
    KILLED run with only its own epochs, and the retry gets a run of its own (attempt 2)."""
    args = (*_args("kt9"), "--engine", "bayesian")
    bg = background(*args)
    training = bg.wait_for("trial 1 training", lambda: _second_trial_training(store, "kt9"))
    assert bg.signal(signal.SIGKILL) == -signal.SIGKILL
    orphan_id, number = training.info.run_id, int(training.data.tags["medtune.trial"])
    epochs_before = store.client.get_metric_history(orphan_id, "val_loss")
    [parent] = store.searches("kt9")

    proc = project.medtune(*args)
    assert "orphaned" in proc.stderr, proc.stderr[-3000:]

    orphan = store.client.get_run(orphan_id)
    assert orphan.info.status == "KILLED" and f"process {bg.pid} died" in orphan.data.tags["medtune.error"]
    assert orphan.data.tags["medtune.attempt"] == "1"
    assert store.client.get_metric_history(orphan_id, "val_loss") == epochs_before  # only its own attempt
    attempts = [r for r in store.trials("kt9") if int(r.data.tags["medtune.trial"]) == number]
    [retry] = [r for r in attempts if r.info.run_id != orphan_id]
    assert retry.data.tags["medtune.attempt"] == "2" and retry.info.run_name == f"trial-{number:03d}-attempt2"
    assert retry.info.status == "FINISHED" and retry.data.tags["medtune.trial_state"] == "COMPLETE"
    assert retry.data.tags["mlflow.parentRunId"] == parent.info.run_id
    [again] = store.searches("kt9")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.metrics["trials_done"] == 2
    assert not store.running(), store.describe()
