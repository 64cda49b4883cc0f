"""End to end on `synthetic`: train (explicit params) and evaluate through `mlflow run`, the
registered @champion served over REST and used by `medtune predict`, then `main`.

One isolated project (SQLite store, registry, caches) for the whole module: the train run is
the expensive part (about a minute on 2 cores), so the tests after it reuse its model. The tests
run in file order; `main` comes last because it registers another version.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import activate_project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("test_train_evaluate"),
]  # one worker: the module's fixture built once

MODEL = "medtune-synthetic"
CLASSES = ["crescent", "disc", "ring", "speckled"]
PARAMS = {  # the names of search_spaces/demo.yaml, small values
    "num_blocks": 2,
    "filters": 16,
    "kernel_size": 3,
    "conv_type": "standard",
    "residual": False,
    "batch_norm": True,
    "dropout": 0.1,
    "l2": 1.0e-4,
    "dense_units": 64,
    "optimizer": "adam",
    "learning_rate": 1.0e-3,
    "batch_size": 32,
    "label_smoothing": 0.0,
    "augment": 0.0,
}
SCALARS = [
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "roc_auc_macro",
    "roc_auc_weighted",
    "log_loss",
    "ece",
]
PER_CLASS = ["precision", "recall", "specificity", "f1"]
TEST_METRICS = [f"test_{m}" for m in SCALARS] + [f"test_{m}_{c}" for m in PER_CLASS for c in CLASSES]
EVALUATION_ARTIFACTS = [
    "evaluation/classification_report.json",
    "evaluation/classification_report.txt",
    "evaluation/confusion_matrix.png",
    "evaluation/confusion_matrix_normalized.png",
    "evaluation/roc_curves.png",
    "evaluation/reliability.png",
    "evaluation/predictions.csv",
    *[f"evaluation/gradcam/{c}.png" for c in CLASSES],
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The `project` fixture of tests/conftest.py, for a whole module."""
    home = tmp_path_factory.mktemp("e2e") / "home"
    home.mkdir()
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        yield activate_project(mp, home)
    mlflow.set_tracking_uri(previous)


def step_runs(step: str, status: str | None = "FINISHED"):
    client = MlflowClient()
    exp = client.get_experiment_by_name("medtune-synthetic")
    flt = f"tags.`medtune.step` = '{step}'" + (f" and attributes.status = '{status}'" if status else "")
    return client.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"])


def launcher_runs():
    client = MlflowClient()
    return client.search_runs(
        [client.get_experiment_by_name("Default").experiment_id], order_by=["attributes.start_time DESC"]
    )


def artifact_paths(run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in MlflowClient().list_artifacts(run_id, path):
        out.extend(artifact_paths(run_id, f.path) if f.is_dir else [f.path])
    return out


@pytest.fixture(scope="module")
def trained(home):
    params = home.home.parent / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    proc = home.mlflow_run("train", {"params": str(params), "epochs": 2, "image_size": 32, "patience": 2})
    runs = step_runs("train")
    assert len(runs) == 1, proc.stderr[-3000:]
    return {"project": home, "proc": proc, "run": runs[0], "params_file": str(params)}


def test_train_entry_point_logs_evaluation_links_and_registers_the_champion(trained):
    run, client = trained["run"], MlflowClient()
    assert "-> @champion" in trained["proc"].stdout
    metrics = run.data.metrics
    missing = [k for k in TEST_METRICS if k not in metrics]
    assert not missing, missing
    assert all(np.isfinite(metrics[k]) for k in TEST_METRICS)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_log_loss"] > 0
    assert len(client.get_metric_history(run.info.run_id, "val_macro_f1")) == 2  # per-epoch curves
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2

    artifacts = artifact_paths(run.info.run_id)
    for name in [*EVALUATION_ARTIFACTS, "learning_curves.png", "class_weights.json"]:
        assert name in artifacts, (name, artifacts)
    with open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="class_weights.json")) as fh:
        weights = json.load(fh)
    assert sorted(weights) == CLASSES and all(w > 0 for w in weights.values())
    predictions = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluation/predictions.csv")
    )
    manifest = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run.data.tags["medtune.split_run_id"], artifact_path="manifest.csv")
    )
    test_rows = manifest[manifest["split"] == "test"]
    assert len(predictions) == len(test_rows) > 0 and set(predictions["true"]) == set(CLASSES)
    assert sorted(Path(p).name for p in predictions["path"]) == sorted(Path(p).name for p in test_rows["path"])
    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="evaluation/classification_report.json"
            )
        ).read_text()
    )
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"])

    tags, params = run.data.tags, run.data.params
    split = client.get_run(tags["medtune.split_run_id"])
    assert split.data.tags["medtune.step"] == "split" and split.info.status == "FINISHED"
    assert tags["medtune.device"] == "CPU"
    assert "medtune.search_run_id" not in tags and params["params_source"] == trained["params_file"]
    assert params["num_blocks"] == "2" and params["epochs"] == "2" and params["image_size"] == "32"
    assert tags["medtune.test_split"].startswith("synthetic:")

    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    assert tags["medtune.model_version"] == "1" and tags["medtune.decision"] == "champion"
    assert version.tags["medtune.decision"] == "champion"
    assert float(version.tags["medtune.test_macro_f1"]) == pytest.approx(metrics["test_macro_f1"], abs=1e-6)
    assert version.tags["medtune.test_split"] == tags["medtune.test_split"]
    assert metrics["promoted"] == 1.0

    # the `mlflow run` launcher run points at the train run, not at the split made on the way
    launcher = launcher_runs()[0]
    assert launcher.data.tags["medtune.step_run_id"] == run.info.run_id
    assert run.data.tags["medtune.launcher_run_id"] == launcher.info.run_id
    assert launcher.info.status == "FINISHED"
    assert "medtune.launcher_run_id" not in split.data.tags


def test_evaluate_entry_point_reproduces_the_train_evaluation(trained):
    project, train = trained["project"], trained["run"]
    proc = project.mlflow_run("evaluate", {"model_uri": f"models:/{MODEL}@champion"})
    assert "evaluate: accuracy=" in proc.stdout
    runs = step_runs("evaluate")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id != train.info.run_id
    for key in TEST_METRICS:
        assert run.data.metrics[key] == pytest.approx(train.data.metrics[key], abs=1e-5), key
    assert run.data.tags["medtune.test_split"] == train.data.tags["medtune.test_split"]
    assert run.data.tags["medtune.split_run_id"] == train.data.tags["medtune.split_run_id"]
    assert run.data.tags["medtune.model_uri"] == f"models:/{MODEL}@champion"
    assert (run.data.tags["medtune.model_name"], run.data.tags["medtune.model_version"]) == (MODEL, "1")
    assert set(EVALUATION_ARTIFACTS) <= set(artifact_paths(run.info.run_id))


def test_evaluate_on_a_folder_of_class_subfolders(trained, tmp_path):
    from medtune.errors import DataError
    from medtune.steps.evaluate import EvaluateOptions, run_evaluate

    source = trained["project"].home / ".medtune" / "cache" / "synthetic"
    folder = tmp_path / "clinic"
    for cls in CLASSES:
        (folder / cls).mkdir(parents=True)
        for f in sorted((source / cls).glob("*.png"))[:3]:
            shutil.copy(f, folder / cls / f.name)
    (folder / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    run_id, ev = run_evaluate(EvaluateOptions(model_uri=f"models:/{MODEL}/1", data_dir=str(folder)))
    assert len(ev.predictions) == 12 and "broken.png" not in " ".join(ev.predictions["path"])
    run = MlflowClient().get_run(run_id)
    assert run.data.params["test_source"] == f"folder {folder}"
    assert run.data.tags["medtune.test_split"].startswith("folder:")
    assert run.data.metrics["test_accuracy"] == pytest.approx(ev.metrics["test_accuracy"])

    (folder / "glioma").mkdir()
    shutil.copy(next((source / "disc").glob("*.png")), folder / "glioma" / "x.png")
    with pytest.raises(DataError, match="glioma"):
        run_evaluate(EvaluateOptions(model_uri=f"models:/{MODEL}/1", data_dir=str(folder)))


def test_train_and_evaluate_log_a_model_card_whose_figures_are_the_logged_metrics(trained):
    """Every section, the logged figures with intervals around them, HTML with no URL; the version's description."""
    import re

    from medtune.model_card import SECTIONS
    from medtune.tracking.cards import load_card

    run, client = trained["run"], MlflowClient()
    assert {
        "model_card/model_card.md",
        "model_card/model_card.html",
        "model_card/model_card.json",
        "model_card/figures/confusion_matrix.png",
        "model_card/figures/reliability.png",
    } <= set(artifact_paths(run.info.run_id))
    card, metrics = load_card(run.info.run_id), run.data.metrics
    for key, est in card.results.headline.items():
        assert est.value == pytest.approx(metrics[f"test_{key}"], abs=1e-9) and est.low <= est.value <= est.high, key
    for c in card.results.per_class:
        assert c.sensitivity.value == pytest.approx(metrics[f"test_recall_{c.name}"])
        assert c.specificity.value == pytest.approx(metrics[f"test_specificity_{c.name}"])
        assert c.sensitivity.low <= c.sensitivity.value <= c.sensitivity.high
    assert card.results.ece == pytest.approx(metrics["test_ece"])
    confusion = np.asarray(card.results.confusion)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["test_accuracy"])
    assert card.data.counts["test"] == {c: int(n) for c, n in zip(CLASSES, confusion.sum(1))}
    assert card.model.parameters > 0 and card.model.params["num_blocks"] == 2
    assert card.model.params_source == f"params file {trained['params_file']}"
    assert card.gate.alias == "champion" and card.gate.reason == "no champion yet"
    assert card.model.temperature == pytest.approx(metrics["temperature"], rel=1e-6) != 1.0  # calibrated by default
    assert (
        card.results.set_coverage == pytest.approx(metrics["test_set_coverage"]) and card.model.conformal_level == 0.9
    )
    assert not any("gradcam" in p for p in artifact_paths(run.info.run_id, "model_card"))  # no test image by default
    assert len(card.described) == sum(card.examples.values()) > 0

    md = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model_card/model_card.md")
    ).read_text()
    page = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model_card/model_card.html")
    ).read_text()
    assert re.findall(r"^## (.+)$", md, flags=re.M) == list(SECTIONS)
    assert all(f"<h2>{s}</h2>" in page for s in SECTIONS)
    assert f"{metrics['test_macro_f1']:.3f} [" in md and f"{metrics['test_macro_f1']:.3f} [" in page
    no_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in no_images and 'src="data:image/png;base64,' in page

    version = client.get_model_version(MODEL, "1")
    assert version.description.startswith("medtune-synthetic v1: custom at 32 px")
    assert f"macro-F1 {metrics['test_macro_f1']:.3f} [" in version.description
    assert "not for diagnosis" in version.description

    evaluation = next(
        r
        for r in step_runs("evaluate")  # the evaluate entry point's run, earlier in this module
        if r.data.tags["medtune.model_uri"] == f"models:/{MODEL}@champion"
    )
    ev_card = load_card(evaluation.info.run_id)
    assert ev_card.title == "medtune-synthetic v1" and ev_card.model.run_id == run.info.run_id
    assert ev_card.results.headline["macro_f1"].value == pytest.approx(evaluation.data.metrics["test_macro_f1"])
    assert ev_card.gate == card.gate


def test_champion_is_rescored_at_its_own_image_size(trained):
    """The gate scores the champion on this split's test images at its own size, image by image in their order."""
    from medtune.evaluation import manifest_test_set
    from medtune.serving import predict_on_split
    from medtune.tracking.splits import load_split

    train = trained["run"]
    split48 = load_split("synthetic", 48, split_run=train.data.tags["medtune.split_run_id"])
    test48 = manifest_test_set(split48)
    assert test48.x.shape[1:] == (48, 48, 3) and test48.split_id == train.data.tags["medtune.test_split"]
    pred = predict_on_split(f"models:/{MODEL}/1", split48, test48)  # the 32 px model on the same images
    logged = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=train.info.run_id, artifact_path="evaluation/predictions.csv")
    )
    by_path = dict(zip(logged["path"], logged["pred"]))
    assert [CLASSES[i] for i in pred] == [by_path[p] for p in test48.paths]
    split48.classes = ["a", "b", "c", "d"]  # another task: cannot be compared
    assert predict_on_split(f"models:/{MODEL}/1", split48, test48) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, payload: dict):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _png(size=(45, 37)) -> bytes:
    from PIL import Image

    from medtune.datasets.synthetic import generate

    x, _, _ = generate(1, 64, seed=5)
    buf = io.BytesIO()
    Image.fromarray(x[1]).resize(size).save(buf, "PNG")
    return buf.getvalue()


def test_rest_server_answers_with_labels_and_probabilities(trained, tmp_path):
    project = trained["project"]
    port = _free_port()
    log_file = tmp_path / "serve.log"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{MODEL}@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with open(log_file, "w") as log:
        server = subprocess.Popen(
            cmd, env=project.env, cwd=project.home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90  # about 30 s on an idle 2-core machine (TensorFlow import)
        while True:
            assert server.poll() is None, f"server exited {server.returncode}:\n{log_file.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no /ping answer in 90 s:\n{log_file.read_text()[-3000:]}"
            time.sleep(1)

        png = base64.b64encode(_png()).decode()
        status, body = _post(port, {"dataframe_split": {"columns": ["image"], "data": [[png], [png]]}})
        assert status == 200, body
        preds = body["predictions"]
        assert len(preds) == 2 and preds[0] == preds[1]
        assert sorted(preds[0]) == ["label", "prediction_set", *[f"prob_{c}" for c in CLASSES]]
        assert preds[0]["prediction_set"][0] == preds[0]["label"]
        assert preds[0]["label"] in CLASSES
        assert sum(preds[0][f"prob_{c}"] for c in CLASSES) == pytest.approx(1.0, abs=1e-5)

        # the same answer as the registered model loaded in-process
        local = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(pd.DataFrame({"image": [_png()]})).iloc[0]
        assert preds[0]["label"] == local["label"]
        for c in CLASSES:
            assert preds[0][f"prob_{c}"] == pytest.approx(local[f"prob_{c}"], abs=1e-5)

        bad = base64.b64encode(b"not an image at all").decode()
        status, body = _post(port, {"dataframe_split": {"columns": ["image"], "data": [[png], [bad]]}})
        assert status == 400 and "row 1: cannot decode image (not an image)" in body["message"], body
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=15)


def test_predict_command_labels_a_folder_and_skips_a_corrupt_file(trained, tmp_path):
    project = trained["project"]
    source = project.home / ".medtune" / "cache" / "synthetic"
    folder = tmp_path / "incoming"
    (folder / "ward2").mkdir(parents=True)
    good = []
    for cls in ("disc", "ring"):
        for f in sorted((source / cls).glob("*.png"))[:2]:
            good.append(shutil.copy(f, folder / f.name))
    good.append(shutil.copy(sorted((source / "crescent").glob("*.png"))[0], folder / "ward2" / "disc_0000.png"))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / ".hidden.png").write_bytes(b"ignored")
    out_csv, overlays = tmp_path / "out" / "x.csv", tmp_path / "overlays"

    proc = project.medtune(
        "predict",
        "--model",
        f"models:/{MODEL}@champion",
        str(folder),
        "--output",
        str(out_csv),
        "--gradcam",
        str(overlays),
    )
    assert "5 images" in proc.stdout and "1 skipped" in proc.stdout
    assert f"skipped {folder / 'corrupt.jpg'}: truncated image" in proc.stderr  # a JPEG header, then junk
    table = pd.read_csv(out_csv)
    assert sorted(table["path"]) == sorted(str(p) for p in good)
    assert set(table["label"]) <= set(CLASSES)
    np.testing.assert_allclose(table[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)
    sets = [s.split(" | ") for s in table["prediction_set"]]  # the champion has a conformal threshold
    assert all(label in s and set(s) <= set(CLASSES) for label, s in zip(table["label"], sets))
    written = sorted(p.name for p in overlays.iterdir())
    assert len(written) == 5  # two inputs named disc_0000.png: two overlays
    assert "disc_0000_gradcam.png" in written and "disc_0000_2_gradcam.png" in written
    assert sorted(Path(p).name for p in table["gradcam"]) == written


def test_main_entry_point_runs_each_step_as_its_own_run(trained):
    """`main` after `train`: it reuses the finished split, searches, trains and gates a new version."""
    project = trained["project"]
    before = {r.info.run_id for r in step_runs("split", status=None)}
    assert len(before) == 1
    project.mlflow_run(
        "main",
        {"trials": 2, "search_epochs": 1, "epochs": 2, "image_size": 32, "search_image_size": 32, "space": "demo"},
    )
    assert {r.info.run_id for r in step_runs("split", status=None)} == before  # no second split run
    split_id = before.pop()
    searches, trains = step_runs("search"), step_runs("train")
    assert len(searches) == 1 and len(trains) == 2
    search, train = searches[0], trains[0]
    assert search.data.tags["medtune.split_run_id"] == split_id
    assert train.data.tags["medtune.split_run_id"] == split_id
    assert train.data.tags["medtune.search_run_id"] == search.info.run_id
    assert train.data.params["params_source"] == f"search {search.info.run_id}"
    assert train.data.tags["medtune.model_version"] == "2"
    decision = train.data.tags["medtune.decision"]
    assert decision in ("champion", "challenger")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, decision).version) == "2"
    assert float(train.data.tags["medtune.champion_score_before"]) == pytest.approx(
        trained["run"].data.metrics["test_macro_f1"], abs=1e-6
    )
    version_tags = client.get_model_version(MODEL, "2").tags  # the paired comparison with v1, on the version
    low, high = map(float, version_tags["medtune.gate_interval"].strip("[]").split(","))
    assert low <= float(version_tags["medtune.gate_difference"]) <= high
    assert (decision == "champion") == (low > 0)
    assert all(k in train.data.metrics for k in TEST_METRICS)

    launcher = launcher_runs()[0]  # the `mlflow run -e main` run links every step
    tags = launcher.data.tags
    assert tags["medtune.step"] == "main" and launcher.info.status == "FINISHED"
    assert tags["medtune.split_run_id"] == split_id
    assert tags["medtune.search_run_id"] == search.info.run_id
    assert tags["medtune.train_run_id"] == train.info.run_id
    # the pipeline's own run, in the dataset's experiment, is the parent of the steps it ran
    pipeline = MlflowClient().get_run(tags["medtune.pipeline_run_id"])
    assert pipeline.data.tags["medtune.step"] == "main" and pipeline.info.status == "FINISHED"
    assert pipeline.info.experiment_id == train.info.experiment_id
    assert pipeline.data.tags["medtune.launcher_run_id"] == launcher.info.run_id
    for step_run in (search, train):
        assert step_run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
        assert step_run.data.tags["medtune.pipeline_run_id"] == pipeline.info.run_id
    assert pipeline.data.tags["medtune.train_run_id"] == train.info.run_id
    assert pipeline.data.metrics["test_accuracy"] == train.data.metrics["test_accuracy"]
