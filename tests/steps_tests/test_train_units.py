"""Fast checks of the train / evaluate / predict / main helpers (no training run)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from medtune.errors import ConfigError
from medtune.steps import pipeline, predict, train
from medtune.tracking import launcher_set_aside


def test_params_from_file_reads_yaml_json_and_downloaded_best_params(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("num_blocks: 2\nfilters: 16\nlearning_rate: 1.0e-3\n")
    assert train.params_from_file(str(f)) == {"num_blocks": 2, "filters": 16, "learning_rate": 1e-3}
    g = tmp_path / "best_params.json"
    g.write_text(json.dumps({"trial": 3, "params": {"num_blocks": 3}}))
    assert train.params_from_file(str(g)) == {"num_blocks": 3}


@pytest.mark.parametrize(
    ("content", "message"), [(None, "file not found"), ("[1, 2]", "expected a mapping"), ("a: [1, 2", "not valid YAML")]
)
def test_params_from_file_errors_name_the_file(tmp_path, content, message):
    f = tmp_path / "p.yaml"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        train.params_from_file(str(f))


def test_float32_copy_of_a_mixed_precision_model():
    params = {"num_blocks": 2, "filters": 4, "dense_units": 8, "batch_norm": True, "dropout": 0.0}
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype("float32")
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        keras.utils.set_random_seed(0)
        from medtune.models import build_model, float32_copy

        mixed = build_model(params, (16, 16, 3), 3)
        assert mixed.get_layer("block0_conv0").compute_dtype == "float16"
        copy = float32_copy(mixed, params, (16, 16, 3), 3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(layer.compute_dtype == "float32" for layer in copy.layers if layer.weights)
    for a, b in zip(mixed.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(copy.predict(x, verbose=0), mixed.predict(x, verbose=0), atol=2e-2)


def test_launcher_run_id_is_hidden_inside_the_block_and_restored(monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    with launcher_set_aside() as value:
        assert value == "abc" and "MLFLOW_RUN_ID" not in os.environ
    assert os.environ["MLFLOW_RUN_ID"] == "abc"
    monkeypatch.delenv("MLFLOW_RUN_ID")
    with launcher_set_aside() as value:
        assert value is None
    assert "MLFLOW_RUN_ID" not in os.environ


def test_best_params_of_search_refuses_runs_that_are_not_finished_searches(project):
    import mlflow

    from medtune import tracking

    with pytest.raises(ConfigError, match="no finished search"):
        train.best_params_of_search("synthetic", "latest")
    experiment_id = tracking.ensure_experiment("synthetic")
    with mlflow.start_run(experiment_id=experiment_id, tags={"medtune.step": "trial"}) as run:
        pass
    with pytest.raises(ConfigError, match="not a medtune search run"):
        train.best_params_of_search("synthetic", run.info.run_id)
    with mlflow.start_run(
        experiment_id=experiment_id, tags={"medtune.step": "search", "medtune.best_trial": "none"}
    ) as run:
        pass
    with pytest.raises(ConfigError, match="no completed trial"):
        train.best_params_of_search("synthetic", run.info.run_id)


def test_expand_inputs_walks_folders_once_and_leaves_out_its_own_outputs(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    for name in ("a.png", "sub/b.jpg", ".hidden.png", ".git/c.png", "predictions.csv"):
        (folder / name).write_bytes(b"x")
    (folder / "overlays").mkdir()
    (folder / "overlays" / "a_gradcam.png").write_bytes(b"x")
    files = predict.expand_inputs(
        [str(folder), str(folder / "a.png")], exclude=[folder / "predictions.csv", folder / "overlays"]
    )
    assert [f.relative_to(folder).as_posix() for f in files] == ["a.png", "sub/b.jpg"]
    # a file named explicitly is always tried
    assert predict.expand_inputs([str(folder / "predictions.csv")], exclude=[folder / "predictions.csv"])


def test_overlay_names_are_unique():
    from pathlib import Path

    used: set[str] = set()
    names = [predict._overlay_name(Path(p), used) for p in ("a/x.png", "b/x.jpg", "c/x.png", "y z.png")]
    assert names == ["x_gradcam.png", "x_2_gradcam.png", "x_3_gradcam.png", "y_z_gradcam.png"]


def test_main_trains_the_best_trial_of_its_own_search_and_stops_without_a_completed_trial(monkeypatch):
    from medtune.steps import search, split
    from medtune.steps import train as train_step

    calls = {}
    monkeypatch.setenv("MLFLOW_RUN_ID", "launcher")
    monkeypatch.setattr(pipeline, "_link", lambda launcher, tags, step_run=None: calls.setdefault("link", launcher))
    monkeypatch.setattr(pipeline, "_log_files", lambda run_id, files: calls.setdefault("files", files))
    monkeypatch.setattr(
        split, "run_split", lambda opts, reuse_run: calls.update(split=(opts, reuse_run)) or SimpleNamespace(run_id="S")
    )
    monkeypatch.setattr(
        search,
        "run_search",
        lambda opts, budget=None: (
            calls.update(search=opts) or SimpleNamespace(run_id="Q", best=SimpleNamespace(number=0))
        ),
    )
    monkeypatch.setattr(
        train_step,
        "run_train",
        lambda opts, budget=None: (
            calls.update(train=opts) or SimpleNamespace(run_id="T", model_version="1", decision=None, metrics={})
        ),
    )
    out = pipeline.run_pipeline(
        pipeline.PipelineOptions(trials=2, search_image_size=32, image_size=40, mixed_precision=False, margin=0.1)
    )
    assert "MLFLOW_RUN_ID" not in os.environ and calls["link"] == "launcher"  # no step adopts the launcher
    assert calls["split"][1] is True and calls["split"][0].image_size == 40
    assert calls["search"].split_run == "S" and calls["search"].image_size == 32 and calls["search"].trials == 2
    t = calls["train"]
    assert (t.search_run, t.split_run, t.image_size, t.mixed_precision, t.margin) == ("Q", "S", 40, False, 0.1)
    plan = calls["files"]["plan.json"]  # without a budget the plan is the defaults, with what was given
    assert (plan["trials"], plan["search_image_sizes"], plan["final_image_size"]) == (2, (32,), 40)
    assert (plan["final_epochs"], plan["ensemble"], plan["space"]) == (t.epochs, t.ensemble, calls["search"].space)
    assert plan["reasons"]["trials"] == "given" and plan["budget_s"] is None
    assert (out.split_run, out.search_run) == ("S", "Q")

    monkeypatch.setattr(search, "run_search", lambda opts, budget=None: SimpleNamespace(run_id="Q", best=None))
    with pytest.raises(ConfigError, match="no trial completed"):
        pipeline.run_pipeline(pipeline.PipelineOptions())


def test_latest_search_means_the_best_trial_of_the_study_across_its_workers(project):
    import mlflow

    from medtune import tracking

    experiment_id = tracking.ensure_experiment("synthetic")

    def worker_run(study: str, best: float, lr: float) -> str:
        tags = {"medtune.step": "search", "medtune.study": study, "medtune.best_trial": "1"}
        tags.update({"medtune.objective": "val_macro_f1", "medtune.direction": "maximize"})
        with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
            mlflow.log_metric("best_val_macro_f1", best)
            mlflow.log_dict({"params": {"learning_rate": lr}, "value": best}, "best_params.json")
        return run.info.run_id

    other_study = worker_run("old", 0.99, 1e-1)  # an older study: never chosen for "latest"
    better = worker_run("s", 0.90, 1e-3)  # worker 1 of study s, started first, holds the best trial
    worker_run("s", 0.80, 3e-3)  # worker 2, started last
    params, run_id = train.best_params_of_search("synthetic", "latest")
    assert (run_id, params) == (better, {"learning_rate": 1e-3})
    assert train.best_params_of_search("synthetic", other_study)[1] == other_study  # a named run is kept


def test_a_short_cpu_budget_runs_one_trial_of_the_recipe_with_no_search_budget():
    """Rule 1 as main applies it: the plan's recipe is the search's only trial, never cut by a search budget."""
    from medtune.planning import DataFingerprint, MachineFingerprint, make_plan
    from medtune.steps.search import SearchOptions

    brain = DataFingerprint(("a", "b"), {"a": 1900, "b": 1900}, 3800, 700, 700, 512, 256, 0.0)
    plan = make_plan(brain, MachineFingerprint(gpus=0, cpu_cores=2, memory_gib=24), 30 * 60)
    opts = SearchOptions(timeout=None, budget=None)
    pipeline._search_options(opts, plan)
    assert (opts.warm_start, opts.trials, opts.plateau, opts.rungs) == (f"recipe:{plan.recipe}", 1, 0, None)
    assert opts.image_size == plan.final_image_size and opts.budget is None and opts.pruner == "none"
