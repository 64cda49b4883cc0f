"""Finding step runs, and the one-line errors naming what exists when a run or model is not found."""

from __future__ import annotations

import pytest

from medtune import tracking
from medtune.errors import ConfigError


def _step(dataset, step, status="FINISHED", **tags):
    with tracking.step_run(dataset, step, tags=tags) as run:
        pass
    if status != "FINISHED":
        run.end(status)
    return run.run_id


def test_find_runs_gives_finished_runs_of_one_step_newest_first(client, dataset):
    old = _step(dataset, "split")
    new = _step(dataset, "split", **{"medtune.cache": "reused"})
    _step(dataset, "split", status="FAILED")
    _step(dataset, "train")
    assert [r.info.run_id for r in tracking.find_runs(dataset, "split")] == [new, old]
    assert [r.info.run_id for r in tracking.find_runs(dataset, "split", max_results=1)] == [new]
    reused = tracking.find_runs(dataset, "split", extra_filter="tags.`medtune.cache` = 'reused'")
    assert [r.info.run_id for r in reused] == [new]
    assert len(tracking.find_runs(dataset, "split", status="")) == 3
    assert tracking.find_runs(f"{dataset}-never-split", "split") == []


def test_existing_runs_names_the_latest_finished_runs_or_says_there_are_none(client, dataset):
    assert tracking.existing_runs("train", dataset).startswith(f"there is no finished train run of {dataset}")
    run_id = _step(dataset, "train")
    text = tracking.existing_runs("train", dataset)
    assert text.startswith(f"latest train runs of {dataset}: {run_id} ({dataset}, ")
    assert run_id in tracking.existing_runs("train")  # any medtune experiment of the store


def test_get_step_run_returns_the_run_or_a_config_error_naming_the_option(client, dataset):
    run_id = _step(dataset, "search")
    assert tracking.get_step_run(run_id, "search", "search_run", dataset).info.run_id == run_id
    with pytest.raises(ConfigError, match=rf"^search_run=0+: no such run .*latest search runs of {dataset}: {run_id}"):
        tracking.get_step_run("0" * 32, "search", "search_run", dataset)


def test_model_lookup_errors_say_what_exists(client, tmp_path):
    missing = tracking.model_lookup_error(str(tmp_path / "nowhere"), FileNotFoundError("x"))
    assert isinstance(missing, ConfigError)
    assert str(missing).startswith(f"model={tmp_path / 'nowhere'}: no such file or folder")
    registry = tracking.model_lookup_error("models:/medtune-x@champion", RuntimeError("RESOURCE_DOES_NOT_EXIST"))
    assert str(registry).startswith("model=models:/medtune-x@champion: not found (RESOURCE_DOES_NOT_EXIST); ")
    assert "no model is registered" in str(registry)
    runs = tracking.model_lookup_error("runs:/abc/model", RuntimeError("no run"))
    assert "train run" in str(runs)


def test_existing_models_lists_aliases(client):
    name = "medtune-lookup-test"
    client.create_registered_model(name)
    run_id = client.create_run(client.create_experiment("lookup-models")).info.run_id
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version
    client.set_registered_model_alias(name, "champion", version)
    assert f"{name} (@champion = v{version})" in tracking.existing_models()
