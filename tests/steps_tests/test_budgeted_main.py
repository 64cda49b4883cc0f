"""``medtune main --budget``: the plan from the fingerprints, the rungs, an ensemble of two with test-time flip, end to end.

One real pipeline on the small synthetic set (SQLite MLflow store, real Optuna study): the plan
is printed and logged, the search climbs image-size rungs within its share of the budget, and
final training averages two members in one model that is registered, served through pyfunc and
explained with averaged Grad-CAM.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _json(client, run_id: str, name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, name, tmp)).read_text())


def test_budgeted_main_plans_climbs_rungs_and_registers_an_ensemble(project):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from PIL import Image

    # a trial count makes it search (under 45 CPU minutes the plan would train its first recipe only)
    proc = project.medtune("main", "--budget", "3m", "--ensemble", "2", "--trials", "8", "--tta", "flip", timeout=900)
    out = proc.stdout + proc.stderr
    assert "Plan for synthetic" in out and "2 x " in out  # the table, with the ensemble the user gave

    client = MlflowClient(project.tracking_uri)
    exp = client.get_experiment_by_name("medtune-synthetic")
    runs = {
        r.data.tags["medtune.step"]: r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("medtune.step") in ("search", "train")
    }
    search, train = runs["search"], runs["train"]

    pipeline = client.get_run(search.data.tags["mlflow.parentRunId"])  # `main` has a run of its own, the parent
    assert pipeline.data.tags["medtune.step"] == "main" and pipeline.info.status == "FINISHED"
    assert train.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert _json(client, pipeline.info.run_id, "plan.json") == _json(client, train.info.run_id, "plan.json")
    assert 0 < pipeline.data.metrics["budget_used_s"] and pipeline.data.metrics["budget_planned_s"] == 180
    plan = _json(client, search.info.run_id, "plan.json")
    fingerprint = _json(client, train.info.run_id, "fingerprint.json")
    assert plan["ensemble"] == 2 and plan["reasons"]["ensemble"] == "given"
    final_plan = _json(client, train.info.run_id, "plan.json")  # rule 6 again, with the search's epoch time
    assert final_plan["measured_epoch_s"] > 0 and final_plan["ensemble"] == 2
    assert train.data.params["epochs"] == str(final_plan["epochs"])
    assert plan["budget_s"] <= 180 and plan["search_s"] == pytest.approx(0.4 * plan["budget_s"])
    assert len(plan["rungs"]) == 3 and plan["rungs"][-1] == plan["image_size"]
    assert fingerprint["data"]["n_train"] > 0 and fingerprint["machine"]["cpu_cores"] >= 1

    # the search: its share of the budget recorded, every trial's sizes logged per epoch
    assert search.data.params["budget_min"] == str(round(plan["search_s"] / 60, 2))
    assert search.data.metrics["budget_used_s"] > 0 and "medtune.stop_reason" in search.data.tags
    trials = client.search_runs([exp.experiment_id], "tags.`medtune.step` = 'trial'")
    sizes = [
        [m.value for m in sorted(client.get_metric_history(t.info.run_id, "image_size"), key=lambda m: m.step)]
        for t in trials
    ]
    assert [plan["rungs"][0]] == sorted({s[0] for s in sizes if s})  # every trial starts at the smallest rung
    climbed = [s for s in sizes if len(s) > 1]
    assert climbed and all(s == sorted(s) and len(set(s)) > 1 for s in climbed)

    # final training: two members, one registered model
    assert train.data.params["ensemble"] == "2"
    assert train.data.tags["mlflow.runName"].startswith(
        f"train-synthetic-{train.data.params['backbone']}-{plan['image_size']}px-x2-"
    )  # told apart in the table
    assert {"member0_best_val_macro_f1", "member1_best_val_macro_f1"} <= set(train.data.metrics)
    # member 1's epochs re-planned from member 0's measured epoch time
    assert train.data.metrics["member0_epoch_seconds"] > 0 and train.data.metrics["member1_planned_epochs"] >= 4
    assert "test_accuracy" in train.data.metrics
    version = train.data.tags["medtune.model_version"]
    from medtune import explain, serving
    from medtune.models.ensemble import members_of

    with tempfile.TemporaryDirectory() as tmp:
        model, meta = serving.load_keras_from_uri(f"models:/medtune-synthetic/{version}", Path(tmp))
    from medtune.models.tta import base_of

    assert train.data.params["tta"] == "flip" and {"val_macro_f1_plain", "val_macro_f1_flip"} <= set(train.data.metrics)
    assert len(members_of(base_of(model))) == 2  # the flip around the ensemble of two, as one model
    size = int(meta["image_size"])
    images = np.stack([np.full((size, size, 3), v, np.uint8) for v in (40, 200)])
    heatmaps, proba = explain.gradcam(model, images)
    assert heatmaps.shape[0] == 2 and np.allclose(proba.sum(1), 1, atol=1e-4)

    # the registered model's input example is made up, never a patient's image
    local = Path(mlflow.artifacts.download_artifacts(f"models:/medtune-synthetic/{version}"))
    example = mlflow.models.Model.load(str(local)).load_input_example(str(local))
    as_bytes = [base64.b64decode(v) if isinstance(v, str) else bytes(v) for v in example["image"]]
    assert as_bytes == serving.generated_examples(size)

    buf = io.BytesIO()
    Image.fromarray(images[1]).save(buf, format="PNG")
    pyfunc = mlflow.pyfunc.load_model(f"models:/medtune-synthetic/{version}")
    served = pyfunc.predict(pd.DataFrame({"image": [buf.getvalue()]}))
    keras_proba = model.predict(images[1:].astype("float32"), verbose=0)[0]
    prob_cols = [c for c in served.columns if c.startswith("prob_")]
    assert np.allclose(served[prob_cols].to_numpy(dtype=float)[0], keras_proba, atol=1e-4)


def test_a_short_budget_on_cpu_trains_the_first_recipe_without_a_search(project):
    """Under 45 CPU minutes: one probe trial of the Lite0 recipe, then final training gets the rest."""
    from mlflow.tracking import MlflowClient

    from medtune.planning.recipes import RECIPES

    proc = project.medtune("main", "--budget", "2m", timeout=900)
    out = proc.stdout + proc.stderr
    assert "none: one trial of the lite0_whole recipe" in out  # the printed plan

    client = MlflowClient(project.tracking_uri)
    exp = client.get_experiment_by_name("medtune-synthetic")
    runs = client.search_runs([exp.experiment_id])
    [search] = [r for r in runs if r.data.tags.get("medtune.step") == "search"]
    [trial] = [r for r in runs if r.data.tags.get("medtune.step") == "trial"]
    [train] = [r for r in runs if r.data.tags.get("medtune.step") == "train"]
    plan = _json(client, search.info.run_id, "plan.json")
    assert plan["recipe"] == "lite0_whole" and plan["trials"] == 1 and plan["rungs"] == [plan["image_size"]]
    assert "no search" in plan["reasons"]["search_s"]  # the probe's time, not 40 % of the budget
    assert plan["final_s"] == pytest.approx(plan["budget_s"] - plan["search_s"])
    assert trial.data.tags["medtune.recipe"] == "lite0_whole" and trial.info.status == "FINISHED"
    assert trial.data.params["fine_tune_layers"] == str(RECIPES["lite0_whole"]["fine_tune_layers"])
    assert len(client.get_metric_history(trial.info.run_id, "epoch_seconds")) == 2  # head epoch + one fine-tuning
    assert train.data.params["fine_tune_layers"] == trial.data.params["fine_tune_layers"]
    assert train.info.status == "FINISHED" and "test_accuracy" in train.data.metrics
    assert _json(client, train.info.run_id, "plan.json")["measured_epoch_s"] > 0
