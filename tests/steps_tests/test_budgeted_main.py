"""``medtune main --budget``: the plan from the fingerprints, the rungs, an ensemble of two with test-time flip, end to end.

One real pipeline on the small synthetic set (SQLite MLflow store, real Optuna study): the plan
is printed and logged, every value of it is what the runs used, the search climbs image-size
rungs within its share of the budget, the whole run stays within the budget, and final training
averages two members in one model that is registered, served through pyfunc and explained with
averaged Grad-CAM. (The short-budget plan without a search is checked on the plan and on the
options it sets, tests/steps_tests/test_train_units.py.)
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


BUDGET_S = 180
SLACK_S = 90  # past the budget: each fit stops at an epoch boundary, then evaluation and registration finish


def test_budgeted_main_runs_its_plan_within_the_budget(project):
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
    # the whole run within its budget, by its own clock and by the store's
    used = pipeline.data.metrics["budget_used_s"]
    assert pipeline.data.metrics["budget_planned_s"] == BUDGET_S and 0 < used <= BUDGET_S + SLACK_S
    assert (pipeline.info.end_time - pipeline.info.start_time) / 1000 <= BUDGET_S + SLACK_S + 30

    plan = _json(client, search.info.run_id, "plan.json")  # as the search ran it
    final_plan = _json(client, train.info.run_id, "plan.json")  # rule 6 again, with the search's epoch time
    assert _json(client, pipeline.info.run_id, "plan.json") == final_plan
    fingerprint = _json(client, train.info.run_id, "fingerprint.json")
    assert fingerprint["data"]["n_train"] > 0 and fingerprint["machine"]["cpu_cores"] >= 1
    assert plan["ensemble"] == 2 and plan["reasons"]["ensemble"] == "given" and plan["trials"] == 8
    assert "re-planned after the search" in final_plan["reasons"]["final_epochs"]
    assert plan["budget_s"] <= BUDGET_S and plan["search_s"] == pytest.approx(0.4 * plan["budget_s"])
    sizes = plan["search_image_sizes"]
    assert len(sizes) == 3 and sizes[-1] == plan["final_image_size"]

    # every value of the plan is what the runs used
    p, t = search.data.params, train.data.params
    assert (p["space"], p["trials"], p["epochs"]) == (f"{plan['space']}.yaml", "8", str(plan["search_epochs"]))
    assert p["image_sizes"] == ",".join(map(str, sizes)) and p["pruner"] == plan["pruner"]
    assert (p["plateau"], p["class_weights"]) == (str(plan["plateau"]), str(plan["class_weights"]))
    assert (t["epochs"], t["image_size"]) == (str(final_plan["final_epochs"]), str(final_plan["final_image_size"]))
    assert (t["ensemble"], t["class_weights"]) == (str(final_plan["ensemble"]), str(final_plan["class_weights"]))

    # the search: its share of the budget recorded, every trial's sizes logged per epoch
    assert search.data.params["budget_min"] == str(round(plan["search_s"] / 60, 2))
    assert search.data.metrics["budget_used_s"] > 0 and "medtune.stop_reason" in search.data.tags
    trials = client.search_runs([exp.experiment_id], "tags.`medtune.step` = 'trial'")
    sizes = [
        [m.value for m in sorted(client.get_metric_history(t.info.run_id, "image_size"), key=lambda m: m.step)]
        for t in trials
    ]
    assert [plan["search_image_sizes"][0]] == sorted({s[0] for s in sizes if s})  # every trial starts at rung 1
    climbed = [s for s in sizes if len(s) > 1]
    assert climbed and all(s == sorted(s) and len(set(s)) > 1 for s in climbed)

    # final training: two members, one registered model
    assert train.data.params["ensemble"] == "2"
    assert train.data.tags["mlflow.runName"].startswith(
        f"train-synthetic-{train.data.params['backbone']}-{plan['final_image_size']}px-x2-"
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
    from medtune.calibration import uncalibrated
    from medtune.models.tta import base_of

    assert train.data.params["tta"] == "flip" and {"val_macro_f1_plain", "val_macro_f1_flip"} <= set(train.data.metrics)
    assert len(members_of(base_of(uncalibrated(model) or model))) == 2  # (temperature around) flip around ensemble
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


# 5 folds x 10 epochs at 128 px need about 400 s by the cost model on one core (CI pins each test worker
# to one), 330 s on two
FOLDED_BUDGET_S = 420


def test_small_thumbnails_are_upsampled_and_cross_validated_within_the_budget(project):
    """200 images of 28 px: the plan up-samples them (rule 3) and cross-validates (rule 8) by itself;
    the five fold members are registered as one model, calibrated on their out-of-fold predictions."""
    from mlflow.tracking import MlflowClient

    from medtune import serving
    from medtune.calibration import uncalibrated
    from medtune.models.ensemble import members_of
    from medtune.models.tta import base_of

    project.env["MEDTUNE_SYNTHETIC"] = "50,28"  # 4 classes x 50
    proc = project.medtune("main", "--budget", f"{FOLDED_BUDGET_S // 60}m", timeout=900)
    assert "5-fold cross-validation, 5 x" in proc.stdout + proc.stderr  # the printed plan

    client = MlflowClient(project.tracking_uri)
    exp = client.get_experiment_by_name("medtune-synthetic")
    train = client.search_runs([exp.experiment_id], "tags.`medtune.step` = 'train'")[0]
    pipeline = client.get_run(train.data.tags["mlflow.parentRunId"])
    assert 0 < pipeline.data.metrics["budget_used_s"] <= FOLDED_BUDGET_S + SLACK_S
    plan = _json(client, train.info.run_id, "plan.json")
    fingerprint = _json(client, train.info.run_id, "fingerprint.json")["data"]
    assert fingerprint["median_side"] == 28 and fingerprint["n_train"] + fingerprint["n_val"] < 1000
    assert plan["final_image_size"] > 28 and "up-sampled" in plan["reasons"]["final_image_size"]
    assert (plan["folds"], plan["ensemble"]) == (5, 5) and plan["reasons"]["folds"].startswith("rule 8")

    params, metrics = train.data.params, train.data.metrics
    assert (params["folds"], params["ensemble"], params["image_size"]) == ("5", "5", str(plan["final_image_size"]))
    assert {f"member{i}_best_val_macro_f1" for i in range(5)} <= set(metrics)
    assert "val_macro_f1_plain" in metrics and "test_accuracy" in metrics
    # calibrated on the out-of-fold predictions of all pooled images, not on half the validation split
    assert "Temperature" in proc.stderr + proc.stdout and "out-of-fold macro-F1" in proc.stderr + proc.stdout
    version = train.data.tags["medtune.model_version"]
    with tempfile.TemporaryDirectory() as tmp:
        model, meta = serving.load_keras_from_uri(f"models:/medtune-synthetic/{version}", Path(tmp))
    inner = uncalibrated(model) or model
    assert len(members_of(base_of(inner) or inner)) == 5 and int(meta["image_size"]) == plan["final_image_size"]
    assert 0.0 < float(meta["conformal_threshold"]) <= 1.0
