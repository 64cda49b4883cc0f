"""Both engines end to end through `mlflow run . --env-manager local`, then the store read back.

Each test searches the small synthetic set (2 trials x 2 epochs at 32 px, the `demo` space) and
checks what the MLflow UI would show: one parent per search, linked children with params, epoch
metrics and images, the best trial tagged, nothing left RUNNING.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medtune.steps.pipeline import ensure_split

EPOCHS = 2
SEARCH = {"dataset": "synthetic", "trials": 2, "epochs": EPOCHS, "image_size": 32}


def _space_names() -> list[str]:
    from medtune.space import load_space, resolve_space_path

    return load_space(resolve_space_path("demo")).names()


def check_search(store, engine: str, trials: int) -> tuple:
    """Everything one finished search must have put in the store; returns (parent, children)."""
    [parent] = [r for r in store.searches() if r.data.tags["medtune.engine"] == engine]
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    assert parent.info.status == "FINISHED"
    assert tags["medtune.step"] == "search" and params["engine"] == engine
    study = tags["medtune.study"]
    children = store.trials(parent=parent.info.run_id)
    ids = [r.info.run_id for r in children]
    assert ids == [r.info.run_id for r in store.trials(study)], "every trial of the study is a child of this parent"
    assert [int(r.data.tags["medtune.trial"]) for r in children] == list(range(trials)), store.describe()

    space = _space_names()
    for run in children:
        t = run.data.tags
        assert run.info.status == "FINISHED", store.describe()
        assert t["mlflow.parentRunId"] == parent.info.run_id
        assert t["medtune.trial_state"] == "COMPLETE" and t["medtune.engine"] == engine
        active = {n for n in space if n != "momentum" or run.data.params.get("optimizer") == "sgd"}
        assert set(run.data.params) == active, "params named as in the space file"
        for key in store.EPOCH_METRICS:
            steps = [step for step, _ in store.history(run.info.run_id, key)]
            assert steps == list(range(EPOCHS)), (key, steps)
        assert run.data.metrics["trial_seconds"] > 0
        assert run.data.metrics[f"best_{params['objective']}"] == pytest.approx(
            max(v for _, v in store.history(run.info.run_id, params["objective"]))
        )
        assert store.artifacts(run.info.run_id) >= set(store.TRIAL_IMAGES)

    files = store.artifacts(parent.info.run_id)
    assert {"best_params.json", "trials.csv", "demo.yaml", "plots/optimization_history.png"} <= files, files
    best_id = tags["medtune.best_run_id"]
    assert best_id in {r.info.run_id for r in children}
    best_run = store.client.get_run(best_id)
    best = json.loads(Path(store.client.download_artifacts(parent.info.run_id, "best_params.json")).read_text())
    assert best["run_id"] == best_id and best["trial"] == int(best_run.data.tags["medtune.trial"])
    assert best["params"] == {k: _typed(v, best["params"][k]) for k, v in best_run.data.params.items()}
    assert {f"best_{k}" for k in best_run.data.params} <= set(params)
    assert all(params[f"best_{k}"] == v for k, v in best_run.data.params.items())
    import pandas as pd

    table = pd.read_csv(store.client.download_artifacts(parent.info.run_id, "trials.csv"))
    assert list(table["number"]) == list(range(trials)) and set(table["state"]) == {"COMPLETE"}
    assert list(table["run_id"]) == ids and list(table["epochs_run"]) == [EPOCHS] * trials
    assert list(table.columns[7:]) == space
    metrics_by_run = {r.info.run_id: r.data.metrics for r in children}
    assert [metrics_by_run[i][f"best_{params['objective']}"] for i in ids] == pytest.approx(list(table["value"]))
    assert metrics["trials_done"] == trials and "best_so_far" in metrics
    assert metrics["best_so_far"] == pytest.approx(best["value"])
    assert [m.value for m in store.client.get_metric_history(parent.info.run_id, "trials_done")][-1] == trials
    assert not store.running(), store.describe()
    return parent, children


def _typed(text: str, like):
    """An MLflow param (text) as the JSON value it stands for."""
    if isinstance(like, bool):
        return text == "True"
    return type(like)(text) if isinstance(like, (int, float)) else text


def check_launcher(store, step_run_id: str) -> None:
    """`mlflow run`'s own run (Default experiment) is ended and points to the search run."""
    launchers = store.runs(experiment="Default")
    assert launchers, "mlflow run should have created a run in the Default experiment"
    for run in launchers:
        assert run.info.status != "RUNNING"
    assert step_run_id in {r.data.tags.get("medtune.step_run_id") for r in launchers}, store.describe()


@pytest.mark.slow
def test_optuna_search_end_to_end_then_resume(project, store):
    proc = project.mlflow_run("search", SEARCH)  # the first search of a dataset runs the split itself
    output = proc.stdout + proc.stderr

    parent, children = check_search(store, "optuna", trials=2)
    check_launcher(store, parent.info.run_id)
    assert store.runs("tags.`medtune.step` = 'split'"), "the split step ran first"
    assert parent.data.tags["medtune.split_run_id"] == store.runs("tags.`medtune.step` = 'split'")[0].info.run_id
    # Console progress: trial k (counted from 0, as the runs trial-000...), epoch, current and best objective.
    assert re.search(r"trial 0 started \(recipe hand_cnn, 0 of 2 done", output), output[-3000:]  # warm start
    assert re.search(r"trial 0 epoch 1/2 val_macro_f1=\d\.\d{4} \(best so far -\)", output), output[-3000:]
    assert re.search(r"trial 1 epoch 2/2 val_macro_f1=\d\.\d{4} \(best so far \d\.\d{4}\)", output), output[-3000:]
    assert re.search(r"trial 1 COMPLETE in \d+ s: val_macro_f1=\d\.\d{4} \(best \d\.\d{4}; 2 of 2 done\)", output)
    assert "search synthetic-demo-optuna-32px-" in output

    # Resume: the same command with a larger budget adds one trial to the same study and parent.
    proc = project.medtune(
        "search",
        "--dataset",
        "synthetic",
        "--trials",
        "3",
        "--epochs",
        str(EPOCHS),
        "--image-size",
        "32",
        "--pruner",
        "none",
    )  # all COMPLETE: no pruning luck
    assert re.search(r"trial 2 started \(2 of 3 done, best \d\.\d{4}\)", proc.stderr), proc.stderr[-3000:]
    [again] = store.searches()
    assert again.info.run_id == parent.info.run_id, "the parent run is reopened, not duplicated"
    resumed, children3 = check_search(store, "optuna", trials=3)
    assert {r.info.run_id for r in children} < {r.info.run_id for r in children3}
    assert resumed.data.metrics["trials_total"] == 3

    import optuna

    study = optuna.load_study(
        study_name=resumed.data.tags["medtune.study"], storage=f"sqlite:///{project.home / 'optuna.db'}"
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {r.info.run_id for r in children3}


@pytest.mark.slow
def test_bayesian_search_end_to_end_then_truncated_state(project, store):
    proc = project.mlflow_run("bayesian", SEARCH)
    output = proc.stdout + proc.stderr
    parent, children = check_search(store, "bayesian", trials=2)
    check_launcher(store, parent.info.run_id)
    assert parent.data.params["pruner"] == "none"
    assert {"plots/parallel_coordinate.png", "plots/param_importances.png"} <= store.artifacts(parent.info.run_id)
    assert re.search(r"trial 1 epoch 2/2 val_macro_f1=\d\.\d{4} \(best so far \d\.\d{4}\)", output), output[-3000:]

    # Same metric and param names as the Optuna engine, so both compare in one table.
    names = set(children[0].data.metrics)
    assert set(store.EPOCH_METRICS) | {"trial_seconds", "best_val_macro_f1", "best_epoch"} <= names

    # A truncated oracle.json (a write cut short) gives a one-line error, not a traceback.
    [state] = (project.home / ".medtune" / "keras_tuner").iterdir()
    oracle = state / "oracle.json"
    oracle.write_bytes(oracle.read_bytes()[: oracle.stat().st_size // 2])
    proc = project.medtune(
        "bayesian",
        "--dataset",
        "synthetic",
        "--trials",
        "3",
        "--epochs",
        str(EPOCHS),
        "--image-size",
        "32",
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medtune: error:")]
    assert len(errors) == 1 and "oracle.json" in errors[0] and "truncated" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [again] = store.searches()
    assert again.info.status == "FINISHED", "the finished search is not reopened for a state it cannot read"
    assert len(store.trials()) == 2 and not store.running()


@pytest.mark.slow
def test_hyperband_search(project, store, caplog):
    """keras-tuner Hyperband: its brackets set the number of trials; every one is tracked."""
    import logging

    from medtune.steps.search import SearchOptions, run_search

    caplog.set_level(logging.INFO, logger="medtune.progress")
    ensure_split("synthetic", 32)
    out = run_search(SearchOptions(dataset="synthetic", engine="hyperband", trials=2, epochs=1, image_size=32))
    finished = [r.getMessage() for r in caplog.records if " COMPLETE in " in r.getMessage()]
    assert len(finished) == len(out.summaries) and finished[-1].endswith(f"; {len(out.summaries)} done)"), finished
    parent = store.client.get_run(out.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["engine"] == "keras_hyperband"
    children = store.trials(parent=out.run_id)
    assert len(children) == len(out.summaries) >= 2
    assert all(r.info.status == "FINISHED" and r.data.tags["medtune.trial_state"] == "COMPLETE" for r in children)
    assert all(not any(k.startswith("tuner/") for k in r.data.params) for r in children)
    assert out.best is not None and parent.data.tags["medtune.best_run_id"] == out.best.run_id
    assert "plots/optimization_history.png" in store.artifacts(out.run_id)
    assert not store.running(), store.describe()
