"""Failures: a trial that raises or diverges is recorded FAILED and skipped; bad input stops early."""

from __future__ import annotations

import pytest

from medtune.steps.pipeline import ensure_split

NAN_SPACE = """\
# Diverges at once: SGD with an absurd learning rate on a tiny CNN.
params:
  num_blocks: {type: categorical, choices: [2]}
  filters: {type: categorical, choices: [8]}
  batch_norm: {type: bool, default: false}
  dense_units: {type: categorical, choices: [16]}
  optimizer: {type: categorical, choices: [sgd]}
  learning_rate: {type: float, low: 1.0e+8, high: 1.0e+9, log: true}
  batch_size: {type: categorical, choices: [16]}
"""


def _options(**kw):
    from medtune.steps.search import SearchOptions

    base = dict(dataset="synthetic", engine="optuna", trials=2, epochs=1, image_size=32, seed=42)
    return SearchOptions(**{**base, **kw})


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_search_goes_on(project, store, monkeypatch):
    from medtune.hpo import optuna_engine
    from medtune.steps.search import run_search

    real_train = optuna_engine.train_trial
    calls = []

    def flaky_train(params, data, **kw):
        number = kw["seed"] - 42  # the engine seeds each trial with seed + trial number
        calls.append(number)
        if number == 1:
            raise MemoryError("simulated out of memory in trial 1")
        return real_train(params, data, **kw)

    monkeypatch.setattr(optuna_engine, "train_trial", flaky_train)
    ensure_split("synthetic", 32)
    out = run_search(_options(study="flaky"))

    assert calls == [0, 1, 2]
    assert [(s.number, s.state) for s in out.summaries] == [(0, "COMPLETE"), (1, "FAILED"), (2, "COMPLETE")]
    assert out.summaries[1].error == "MemoryError: simulated out of memory in trial 1"
    assert out.best is not None and out.best.number in (0, 2)

    parent = store.client.get_run(out.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_failed"] == 1 and parent.data.metrics["trials_complete"] == 2
    trials = store.trials("flaky")
    assert [int(r.data.tags["medtune.trial"]) for r in trials] == [0, 1, 2], store.describe()
    by_number = {int(r.data.tags["medtune.trial"]): r for r in trials}
    failed = by_number[1]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["medtune.trial_state"] == "FAILED"
    assert failed.data.tags["medtune.error"] == "MemoryError: simulated out of memory in trial 1"
    assert failed.data.tags["mlflow.parentRunId"] == out.run_id
    assert "trial_seconds" in failed.data.metrics
    assert set(failed.data.params) >= {"optimizer", "learning_rate"}  # the params that failed are kept
    for n in (0, 2):
        assert by_number[n].info.status == "FINISHED" and by_number[n].data.tags["medtune.trial_state"] == "COMPLETE"
    assert not store.running(), store.describe()

    table = store.client.download_artifacts(out.run_id, "trials.csv")
    import pandas as pd

    csv = pd.read_csv(table)
    assert list(csv["state"]) == ["COMPLETE", "FAILED", "COMPLETE"]
    assert "MemoryError" in csv.loc[1, "error"]


@pytest.mark.slow
def test_nan_loss_trial_is_failed_with_its_reason(project, store, tmp_path):
    """Through the keras-tuner engine (its FailedTrialError path; Optuna's is the test above):
    one trial whose loss becomes NaN ends the 1-trial budget FAILED, with the reason."""
    from medtune.steps.search import run_search

    space = tmp_path / "nan.yaml"
    space.write_text(NAN_SPACE)
    ensure_split("synthetic", 32)
    out = run_search(_options(study="nan", space=str(space), trials=1, engine="bayesian"))

    assert out.best is None
    [trial] = out.summaries
    assert trial.state == "FAILED" and "TrainingDiverged: training diverged: loss became" in trial.error, trial.error
    parent = store.client.get_run(out.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["medtune.best_trial"] == "none"
    assert parent.data.metrics["trials_failed"] == 1 and parent.data.metrics["trials_complete"] == 0
    [run] = store.trials("nan")
    assert run.info.status == "FAILED", store.describe()
    assert run.data.tags["medtune.trial_state"] == "FAILED"
    assert run.data.tags["medtune.error"].startswith("TrainingDiverged: training diverged: loss became")
    assert float(run.data.params["learning_rate"]) >= 1e8
    assert "learning_curves.png" not in store.artifacts(run.info.run_id)
    assert "trials.csv" in store.artifacts(out.run_id)
    assert not store.running(), store.describe()


BAD_SPACES = {
    "unknown-key": ("params:\n  dropout: {type: float, low: 0.0, high: 0.5, stepp: 0.1}\n", "params.dropout.stepp"),
    "bad-yaml": ("params:\n  dropout: {type: float, low: 0.0\n", "YAML syntax error"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown-key", "bad-yaml", "unknown-dataset"])
def test_bad_input_stops_before_any_trial(project, case):
    args = ["search", "--dataset", "synthetic", "--trials", "2", "--epochs", "1", "--image-size", "32"]
    if case == "unknown-dataset":
        args[2] = "no_such_dataset"
        expected = "no_such_dataset"
    else:
        text, expected = BAD_SPACES[case]
        (project.home / "bad.yaml").write_text(text)
        args += ["--space", "bad.yaml"]
    proc = project.medtune(*args, check=False, timeout=180)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medtune: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    if case != "unknown-dataset":
        assert "bad.yaml" in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "tensorflow" not in proc.stderr.lower(), "TensorFlow was started before the input was checked"
    # Stopped before the split and any run (the tracking store was not even opened).
    assert not (project.home / "mlflow.db").exists() and not (project.home / "optuna.db").exists()
