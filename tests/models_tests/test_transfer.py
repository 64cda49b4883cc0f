"""Transfer backbones: build and train each, stages, preprocessing inside the model, Grad-CAM."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtune import training
from medtune.errors import ConfigError
from medtune.explain import find_last_conv_layer, gradcam
from medtune.models import BACKBONES, backbones_of, build_model, check_image_size
from medtune.models.transfer import BACKBONE_SPECS, set_stage, stage_plan, trainable_layer_count

pytestmark = pytest.mark.xdist_group("test_transfer")  # one worker: the module's fixture built once

TRANSFER = [b for b in BACKBONES if b != "custom"]
HEAD = {"dropout": 0.2, "l2": 1e-4, "dense_units": 16, "learning_rate": 1e-3, "optimizer": "adam"}


def _size(backbone: str) -> int:
    return max(32, BACKBONE_SPECS[backbone].min_size)


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    training.release_model()


@pytest.mark.parametrize("backbone", TRANSFER)
def test_every_backbone_builds_and_trains_one_step_from_raw_grey_pixels(backbone):
    size = _size(backbone)
    params = {**HEAD, "backbone": backbone, "fine_tune_layers": 10, "head_epochs": 1}
    model = training.compile_model(build_model(params, (size, size, 1), 3), params)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, size, size, 1)).astype(np.uint8)
    y = np.array([0, 1, 2, 0])
    history = training.fit_stages(
        model,
        params,
        training.make_dataset(x, y, 3, 4, training=True),
        training.make_dataset(x, y, 3, 4, training=False),
        y_val=y,
        epochs=2,
    )
    assert history["stage"] == [1.0, 2.0]  # one epoch per stage, numbered on
    assert all(np.isfinite(history["loss"]))
    proba = training.predict_proba(model, x)
    assert proba.shape == (4, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)


def test_preprocessing_is_the_backbones_own_and_grey_becomes_rgb():
    from medtune.models.layers import BackbonePreprocess

    grey = np.full((1, 2, 2, 1), 255.0, np.float32)
    out = keras.ops.convert_to_numpy(BackbonePreprocess("mobilenet_v2")(grey))
    assert out.shape == (1, 2, 2, 3) and np.allclose(out, 1.0)  # "tf" mode: x / 127.5 - 1
    rgb = np.zeros((1, 1, 1, 3), np.float32)
    out = keras.ops.convert_to_numpy(BackbonePreprocess("resnet50")(rgb))
    expected = keras.applications.resnet50.preprocess_input(rgb.copy())  # "caffe": BGR minus the mean
    np.testing.assert_allclose(out, expected, atol=1e-4)
    ident = np.arange(3, dtype=np.float32).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(BackbonePreprocess("efficientnet_b0")(ident)), ident)


def test_a_saved_transfer_model_loads_and_predicts_the_same(tmp_path):
    import medtune.models.layers  # noqa: F401 - what medtune.serving imports before loading

    params = {**HEAD, "backbone": "mobilenet_v2"}
    model = build_model(params, (32, 32, 3), 2)
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("backbone, minimum", [("xception", 71), ("mobilenet_v2", 32)])
def test_image_below_the_backbone_minimum_is_a_clear_error(backbone, minimum):
    with pytest.raises(ConfigError, match=rf"backbone {backbone} needs at least {minimum} px"):
        check_image_size(["custom", backbone], minimum - 1)
    check_image_size([backbone], minimum)
    with pytest.raises(ConfigError, match=f"{minimum} px"):
        build_model({**HEAD, "backbone": backbone}, (minimum - 1, minimum - 1, 3), 2)


def test_unknown_backbone_and_bad_channels_are_config_errors():
    with pytest.raises(ConfigError, match="backbone: 'vgg16' is not one of"):
        build_model({"backbone": "vgg16"}, (32, 32, 3), 2)
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        build_model({**HEAD, "backbone": "mobilenet_v2"}, (32, 32, 4), 2)


def test_backbones_of_space_and_params():
    from medtune.space import load_space, resolve_space_path

    space = load_space(resolve_space_path("transfer"))
    assert backbones_of(space) == list(BACKBONES)
    assert backbones_of(load_space(resolve_space_path("cnn"))) == ["custom"]
    assert backbones_of({"backbone": "xception"}) == ["xception"]
    assert backbones_of({}) == ["custom"]


def test_stage_plan():
    custom = stage_plan({"learning_rate": 1e-3}, 5)
    assert [(s.number, s.first_epoch, s.end_epoch) for s in custom] == [(1, 0, 5)]
    two = stage_plan(
        {
            "backbone": "resnet50",
            "learning_rate": 1e-3,
            "head_epochs": 2,
            "fine_tune_layers": 30,
            "fine_tune_lr_factor": 0.1,
        },
        5,
    )
    assert [(s.number, s.first_epoch, s.end_epoch, s.fine_tune_layers) for s in two] == [(1, 0, 2, 0), (2, 2, 5, 30)]
    assert two[1].learning_rate == pytest.approx(1e-4)
    frozen = stage_plan({"backbone": "resnet50", "head_epochs": 2, "fine_tune_layers": 0}, 5)
    assert [(s.number, s.end_epoch) for s in frozen] == [(1, 5)]  # 0 layers: the head trains all epochs
    short = stage_plan({"backbone": "resnet50", "head_epochs": 4, "fine_tune_layers": 20}, 3)
    assert [(s.number, s.end_epoch) for s in short] == [(1, 3)]


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """A legacy .h5 weights file for MobileNetV2 (stands in for ImageNet's)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(
            f, keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
        )
    return path


@pytest.mark.parametrize("pretrained", [True, False], ids=["pretrained", "scratch"])
def test_freeze_and_unfreeze_counts_per_stage(pretrained, mobilenet_file):
    from medtune.models.weights import resolve_weights

    params = {**HEAD, "backbone": "mobilenet_v2", "head_epochs": 1, "fine_tune_layers": 20}
    weights = resolve_weights(str(mobilenet_file), ["mobilenet_v2"]) if pretrained else None
    model = build_model(params, (32, 32, 3), 2, weights=weights)
    base = model.get_layer("backbone")
    bn = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.momentum == (0.999 if pretrained else 0.9) for layer in bn)  # scratch: statistics catch up
    stage1, stage2 = stage_plan(params, 3)
    assert set_stage(model, stage1) == 2  # the head: dense and logits
    assert not base.trainable_weights
    top = base.layers[-20:]
    expected = sum(1 for layer in top if layer.weights and not (pretrained and layer in bn))
    assert expected > 0
    assert set_stage(model, stage2) == 2 + expected
    assert all(layer.trainable != pretrained for layer in top if layer in bn)  # pretrained: BatchNorm stays frozen
    assert all(not layer.trainable_weights for layer in base.layers[:-20])
    assert trainable_layer_count(model) == 2 + expected
    assert set_stage(model, stage1) == 2  # and back


def test_stage_two_is_skipped_for_a_pruned_trial_and_early_stopping_spans_stages():
    params = {**HEAD, "backbone": "mobilenet_v2", "head_epochs": 1, "fine_tune_layers": 10}
    model = training.compile_model(build_model(params, (32, 32, 3), 2), params)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    y = np.array([0, 1, 0, 1])
    ds = training.make_dataset(x, y, 2, 4, training=False)
    stages = []
    history = training.fit_stages(
        model,
        params,
        ds,
        ds,
        y_val=y,
        epochs=3,
        stop_requested=lambda: True,
        on_stage=lambda st, n: stages.append(st.number),
    )
    assert stages == [1] and history["stage"] == [1.0]

    stopper = training.StagedEarlyStopping(monitor="val_macro_f1", mode="max", patience=5, restore_best_weights=True)
    history = training.fit_stages(
        model, params, ds, ds, y_val=y, epochs=3, callbacks=[stopper], on_stage=lambda st, n: stages.append(st.number)
    )
    assert stages == [1, 1, 2] and history["stage"] == [1.0, 2.0, 2.0]
    assert stopper.best == max(history["val_macro_f1"])  # the best of both stages, not of stage 2 alone


@pytest.mark.parametrize("backbone", TRANSFER)
def test_gradcam_finds_the_last_conv_map_inside_every_backbone(backbone):
    size = _size(backbone)
    model = build_model({**HEAD, "backbone": backbone}, (size, size, 3), 2)
    path = find_last_conv_layer(model)
    assert path[0] == "backbone" and len(path) == 2
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    heat, proba = gradcam(model, x)
    assert heat.shape == (2, size, size) and np.isfinite(heat).all()
    assert proba.shape == (2, 2)


def _imagenet_mobilenet_file() -> str | None:
    """A local ImageNet MobileNetV2 file: $MEDTUNE_TEST_IMAGENET_WEIGHTS or Keras's own cache."""
    import os

    from medtune.models.weights import _keras_models_dir

    named = os.environ.get("MEDTUNE_TEST_IMAGENET_WEIGHTS")
    cached = _keras_models_dir() / BACKBONE_SPECS["mobilenet_v2"].imagenet_file
    return named or (str(cached) if cached.is_file() else None)


@pytest.mark.slow
@pytest.mark.skipif(
    _imagenet_mobilenet_file() is None,
    reason="needs ImageNet MobileNetV2 weights (set MEDTUNE_TEST_IMAGENET_WEIGHTS or fill Keras's "
    "cache); from random weights MobileNetV2 learns `synthetic` but its heatmaps do not beat "
    "the centre-bias control",
)
def test_gradcam_of_a_fine_tuned_mobilenet_concentrates_on_the_lesion():
    """A MobileNetV2 fine-tuned on `synthetic` in medtune's two stages looks at the lesion, as the custom CNN does."""
    from medtune.models.weights import resolve_weights
    from tests.helpers import transfer_lesion_focus

    # 160 px: a 5x5 last map; upsampled, a perfect 5x5 map beats the control 2.4x (a 3x3 one at 96 px: 1.4x)
    weights = resolve_weights(_imagenet_mobilenet_file(), ["mobilenet_v2"])
    own, control = transfer_lesion_focus("mobilenet_v2", weights, size=160, epochs=10, min_accuracy=0.5)
    assert own > 1.5 * control > 1.5, (own, control)  # as the custom CNN's check in test_evaluation
