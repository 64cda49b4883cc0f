"""The custom CNN built from plain values: every parameter at its edges, names, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtune.errors import ConfigError
from medtune.models import build_model
from medtune.models.cnn import DEFAULTS, LAST_CONV_LAYER, build_cnn

pytestmark = pytest.mark.xdist_group("test_cnn")  # one worker: the module's fixture built once

SHAPE = (32, 32, 3)
BATCH = np.random.default_rng(0).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
SMALL = {"filters": 8, "dense_units": 16}  # keeps the structural tests quick


@pytest.fixture(autouse=True)
def fresh_session():
    yield
    keras.backend.clear_session(free_memory=False)  # gc.collect costs ~0.3 s a call


@pytest.fixture(autouse=True, scope="module")
def free_memory_once():
    yield
    keras.backend.clear_session()


def forward(model: keras.Model, batch: np.ndarray = BATCH) -> np.ndarray:
    return np.asarray(model(batch, training=False))


EDGES = [
    ("num_blocks", 2),
    ("num_blocks", 4),
    ("filters", 32),
    ("filters", 256),
    ("kernel_size", 3),
    ("kernel_size", 5),
    ("conv_type", "standard"),
    ("conv_type", "separable"),
    ("residual", True),
    ("residual", False),
    ("batch_norm", True),
    ("batch_norm", False),
    ("dropout", 0.0),
    ("dropout", 0.6),
    ("l2", 1e-6),
    ("l2", 1e-3),
    ("dense_units", 256),
    ("dense_units", 512),
]


@pytest.mark.parametrize("name, value", EDGES, ids=[f"{n}={v}" for n, v in EDGES])
def test_build_cnn_edge_value_gives_probabilities(name, value):
    model = build_cnn({name: value}, SHAPE, 3)
    probs = forward(model)
    assert probs.shape == (2, 3)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("conv_type", ["standard", "separable"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_residual_combinations_run(conv_type, batch_norm):
    params = {**SMALL, "residual": True, "conv_type": conv_type, "batch_norm": batch_norm, "num_blocks": 4}
    probs = forward(build_cnn(params, SHAPE, 2))
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_defaults_are_used_for_missing_params_and_extra_keys_ignored():
    model = build_cnn({"optimizer": "sgd", "batch_size": 16}, SHAPE, 3)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == DEFAULTS["num_blocks"] * DEFAULTS["convs_per_block"]
    assert convs[0].filters == DEFAULTS["filters"]
    assert convs[-1].filters == DEFAULTS["filters"] * 2 ** (DEFAULTS["num_blocks"] - 1)
    assert model.get_layer("dense").units == DEFAULTS["dense_units"]


def test_layer_names_and_last_conv_is_last_4d_layer():
    model = build_cnn({**SMALL, "num_blocks": 3}, (64, 64, 1), 4)
    names = [l.name for l in model.layers]
    for i in range(3):
        for j in range(DEFAULTS["convs_per_block"]):
            assert f"block{i}_conv{j}" in names
    last_4d = [l for l in model.layers if len(l.output.shape) == 4][-1]
    assert last_4d.name == LAST_CONV_LAYER
    # the last block is not pooled: 64 -> 32 -> 16
    assert tuple(model.get_layer(LAST_CONV_LAYER).output.shape) == (None, 16, 16, 32)
    assert model.get_layer("probs").dtype_policy.compute_dtype == "float32"


def test_filters_double_per_block_and_can_be_capped():
    model = build_cnn({**SMALL, "num_blocks": 4, "max_filters": 32}, SHAPE, 3)
    widths = [model.get_layer(f"block{i}_conv0").filters for i in range(4)]
    assert widths == [8, 16, 32, 32]


def test_rescaling_inside_model_accepts_raw_pixels():
    model = build_cnn(SMALL, SHAPE, 3)
    assert isinstance(model.get_layer("rescale"), keras.layers.Rescaling)
    np.testing.assert_allclose(forward(model, BATCH), forward(model, BATCH.astype("float32")), rtol=1e-5)


def test_separable_and_standard_conv_layers():
    sep = build_cnn({**SMALL, "conv_type": "separable"}, SHAPE, 3)
    assert isinstance(sep.get_layer("block0_conv0"), keras.layers.SeparableConv2D)
    assert sep.get_layer("block0_conv0").depthwise_regularizer is not None
    std = build_cnn({**SMALL, "conv_type": "standard", "kernel_size": 5}, SHAPE, 3)
    layer = std.get_layer("block0_conv0")
    assert type(layer) is keras.layers.Conv2D and layer.kernel_size == (5, 5)


def test_residual_adds_projection_shortcuts():
    model = build_cnn({**SMALL, "residual": True, "num_blocks": 2}, SHAPE, 3)
    names = {l.name for l in model.layers}
    assert {"block0_add", "block1_add", "block0_proj", "block1_proj"} <= names
    assert "block0_add" not in {l.name for l in build_cnn(SMALL, SHAPE, 3).layers}


def test_batch_norm_toggle_and_l2_on_kernels():
    with_bn = build_cnn({**SMALL, "batch_norm": True, "l2": 1e-4}, SHAPE, 3)
    assert any(isinstance(l, keras.layers.BatchNormalization) for l in with_bn.layers)
    assert with_bn.get_layer("block0_conv0").kernel_regularizer is not None
    assert with_bn.get_layer("dense").kernel_regularizer is not None
    assert with_bn.get_layer("block0_conv0").use_bias is False  # BN supplies the bias
    no_bn = build_cnn({**SMALL, "batch_norm": False, "l2": 0.0}, SHAPE, 3)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in no_bn.layers)
    assert no_bn.get_layer("block0_conv0").kernel_regularizer is None


def test_dropout_rate_is_applied():
    model = build_cnn({**SMALL, "dropout": 0.6}, SHAPE, 3)
    assert model.get_layer("dropout_gap").rate == 0.6
    assert model.get_layer("dropout_dense").rate == 0.6


def test_numpy_and_string_values_are_accepted():
    model = build_cnn(
        {
            "num_blocks": np.int64(2),
            "filters": 8.0,
            "residual": "true",
            "batch_norm": np.bool_(False),
            "dense_units": 16,
        },
        SHAPE,
        3,
    )
    assert forward(model).shape == (2, 3)


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_cnn(SMALL, SHAPE, 3)
        assert model.output.dtype == "float32"
        assert model.get_layer("block0_conv0").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "params, name",
    [
        ({"num_blocks": 0}, "num_blocks"),
        ({"num_blocks": 2.5}, "num_blocks"),
        ({"filters": -8}, "filters"),
        ({"filters": "many"}, "filters"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"conv_type": "deformable"}, "conv_type"),
        ({"residual": "maybe"}, "residual"),
        ({"batch_norm": 3}, "batch_norm"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"l2": -1e-4}, "l2"),
        ({"l2": float("nan")}, "l2"),
        ({"dense_units": 0}, "dense_units"),
        ({"num_blocks": 7}, "num_blocks"),  # 32x32 cannot be pooled 6 times
    ],
)
def test_invalid_values_raise_config_error_naming_param(params, name):
    with pytest.raises(ConfigError, match=f"^{name}:"):
        build_cnn(params, SHAPE, 3)


@pytest.mark.parametrize("shape, n_classes", [((32, 32), 3), ((32, 32, 3), 1), ((0, 32, 3), 3)])
def test_invalid_shape_or_classes_raise_config_error(shape, n_classes):
    with pytest.raises(ConfigError):
        build_cnn(SMALL, shape, n_classes)


def test_build_model_dispatches_on_backbone():
    model = build_model({**SMALL, "backbone": "custom"}, SHAPE, 3)
    assert model.name == "custom_cnn"
    assert build_model(SMALL, SHAPE, 3).name == "custom_cnn"
    with pytest.raises(
        ConfigError, match="backbone: 'vgg19' is not one of custom, efficientnet_lite0, efficientnet_lite1,"
    ):
        build_model({"backbone": "vgg19"}, SHAPE, 3)
