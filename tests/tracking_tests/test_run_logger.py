"""RunLogger (params, metrics, tags, artifacts), the store set-up, and the small text helpers."""

from __future__ import annotations

import json
import os
import socket

import mlflow
import pytest

from medtune import tracking


@pytest.fixture
def run(client, dataset):
    experiment_id = tracking.ensure_experiment(dataset)
    return tracking.RunLogger(client.create_run(experiment_id).info.run_id, client)


def test_params_are_text_lists_as_json_and_long_values_cut(client, run):
    run.params({"learning_rate": 0.001, "layers": [32, 64], "space": {"a": 1}, "note": "x" * 7000})
    params = client.get_run(run.run_id).data.params
    assert params["learning_rate"] == "0.001"
    assert json.loads(params["layers"]) == [32, 64] and json.loads(params["space"]) == {"a": 1}
    assert len(params["note"]) == tracking.MAX_PARAM_LEN


def test_a_param_logged_again_keeps_its_first_value(client, run):
    run.params({"epochs": 5})
    run.params({"epochs": 7, "seed": 1})  # MLflow refuses a changed param; the logger keeps the first
    assert client.get_run(run.run_id).data.params == {"epochs": "5", "seed": "1"}


def test_many_params_are_logged_in_batches(client, run):
    run.params({f"p{i:03d}": i for i in range(250)})
    assert len(client.get_run(run.run_id).data.params) == 250


def test_metrics_keep_numbers_and_skip_the_rest(client, run):
    run.metrics({"loss": 0.5, "accuracy": "0.75", "missing": None, "label": "glioma"}, step=3)
    run.metrics({"loss": 0.25}, step=4, synchronous=False)
    mlflow.flush_async_logging()
    assert client.get_run(run.run_id).data.metrics == {"loss": 0.25, "accuracy": 0.75}
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(3, 0.5), (4, 0.25)]


def test_an_epoch_of_keras_logs_is_logged_under_mlflow_names(client, run):
    logs = {"loss": 0.5, "val_loss": 0.6, "learning_rate": 1e-3, "image_size": 48, "val_macro_f1": float("nan")}
    run.epoch(logs, 3)
    run.epoch({"accuracy": 0.9}, 4, prefix="member1_")
    metrics = client.get_run(run.run_id).data.metrics
    assert metrics == {
        "train_loss": 0.5,
        "val_loss": 0.6,
        "learning_rate": 1e-3,
        "image_size": 48.0,
        "member1_train_accuracy": 0.9,
    }  # a NaN score is left out
    assert [m.step for m in client.get_metric_history(run.run_id, "train_loss")] == [3]


def test_tags_and_end_status(client, run):
    run.tags({"medtune.best_trial": 3, "classes": ["a", "b"]})
    run.tags({})
    run.end("FAILED")
    got = client.get_run(run.run_id)
    assert got.data.tags["medtune.best_trial"] == "3" and json.loads(got.data.tags["classes"]) == ["a", "b"]
    assert got.info.status == "FAILED" and tracking.run_status(run.run_id) == "FAILED"


def test_json_text_file_and_folder_artifacts(run, tmp_path):
    run.json({"accuracy": 0.9}, "report.json")
    run.text("hello", "notes/readme.txt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.csv").write_text("x\n1\n")
    run.directory(tmp_path / "folder", "tables")
    run.file(tmp_path / "folder" / "a.csv")
    down = tmp_path / "down"
    assert json.loads(tracking.download_artifact(run.run_id, "report.json", down).read_text()) == {"accuracy": 0.9}
    assert tracking.download_artifact(run.run_id, "notes/readme.txt", down).read_text() == "hello"
    assert tracking.download_artifact(run.run_id, "tables/a.csv", down).read_text() == "x\n1\n"
    assert tracking.download_artifact(run.run_id, "a.csv", down / "top").read_text() == "x\n1\n"


def test_a_figure_is_saved_as_an_image_artifact(run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    run.figure(fig, "plots/curve.png")
    plt.close(fig)
    assert tracking.download_artifact(run.run_id, "plots/curve.png", tmp_path).read_bytes()[:4] == b"\x89PNG"


def test_ensure_experiment_creates_once_under_the_project_and_restores_a_deleted_one(client, store, dataset):
    first = tracking.ensure_experiment(dataset)
    assert tracking.ensure_experiment(dataset) == first
    experiment = client.get_experiment(first)
    assert experiment.name == tracking.experiment_name(dataset) == f"medtune-{dataset}"
    assert experiment.artifact_location == (store / "mlruns" / f"medtune-{dataset}").as_uri()
    client.delete_experiment(first)
    assert tracking.ensure_experiment(dataset) == first
    assert client.get_experiment(first).lifecycle_stage == "active"


def test_experiment_names_are_safe():
    assert tracking.experiment_name("Acne and Rosacea") == "medtune-Acne_and_Rosacea"


def test_configure_prefers_the_argument_then_the_environment_then_the_project(store, monkeypatch, tmp_path):
    before = mlflow.get_tracking_uri()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
        assert tracking.configure("sqlite:///given.db") == "sqlite:///given.db"
        assert mlflow.get_tracking_uri() == "sqlite:///given.db"
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///given.db"  # for child processes
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
        assert tracking.configure() == "sqlite:///from-env.db"
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path))
        assert (
            tracking.configure() == tracking.default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
        )
    finally:
        mlflow.set_tracking_uri(before)


def test_one_line_status_and_process_tags():
    assert tracking.one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert tracking.one_line(KeyError()) == "KeyError: "
    assert len(tracking.one_line(RuntimeError("x" * 900))) == 500
    assert [tracking.status_for(e) for e in (None, ValueError(), KeyboardInterrupt(), tracking.Interrupted())] == [
        "FINISHED",
        "FAILED",
        "KILLED",
        "KILLED",
    ]
    assert tracking.process_tags() == {tracking.TAG_PID: str(os.getpid()), tracking.TAG_HOST: socket.gethostname()}


def test_sigterm_becomes_interrupted():
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        tracking.install_signal_handlers()
        with pytest.raises(tracking.Interrupted, match="received signal"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
