"""Backbone weights: local files (legacy .h5 with or without top, Keras 3 .weights.h5), bad files,
ImageNet without network."""

from __future__ import annotations

import socket
import time

import h5py
import keras
import numpy as np
import pytest

from medtune import training
from medtune.errors import ConfigError
from medtune.models import build_model
from medtune.models.transfer import BACKBONE_SPECS
from medtune.models.weights import WeightsError, resolve_weights

HEAD = {"dropout": 0.0, "dense_units": 8}


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    training.release_model()


def _save_legacy_h5(model, path):
    """What keras.applications downloads: a legacy weights-only HDF5 file (layer_names, by layer)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _fresh(backbone: str, include_top: bool = False):
    keras.utils.set_random_seed(7)
    ctor = getattr(keras.applications, BACKBONE_SPECS[backbone].builder.split(":")[1])
    if include_top:
        return ctor(include_top=True, weights=None, input_shape=(32, 32, 3), classes=5)
    return ctor(include_top=False, weights=None, input_shape=(32, 32, 3))


def _backbone_weights(model):
    return model.get_layer("backbone").get_weights()


@pytest.mark.parametrize("include_top", [False, True], ids=["notop", "with-top"])
def test_a_legacy_h5_file_loads_identical_weights(tmp_path, include_top):
    source = _fresh("mobilenet_v2", include_top)
    path = tmp_path / "mobilenet_v2_weights.h5"
    _save_legacy_h5(source, path)
    weights = resolve_weights(str(path), ["custom", "mobilenet_v2"])
    assert weights["mobilenet_v2"].source == str(path) and len(weights["mobilenet_v2"].sha256) == 64
    keras.utils.set_random_seed(99)  # a different random init, overwritten by the file
    model = build_model({**HEAD, "backbone": "mobilenet_v2"}, (32, 32, 1), 2, weights=weights)
    weighted = [layer for layer in model.get_layer("backbone").layers if layer.weights]
    assert len(weighted) > 50
    for layer in weighted:
        for got, expected in zip(layer.get_weights(), source.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, expected, err_msg=layer.name)


def test_a_keras3_weights_file_loads_identical_weights(tmp_path):
    source = _fresh("efficientnet_b0")
    path = tmp_path / "effnet.weights.h5"
    source.save_weights(path)
    weights = resolve_weights(str(path), ["efficientnet_b0"])
    model = build_model({**HEAD, "backbone": "efficientnet_b0"}, (32, 32, 3), 2, weights=weights)
    for a, b in zip(_backbone_weights(model), source.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_folder_of_keras_files_serves_several_backbones(tmp_path):
    for name in ("mobilenet_v2", "resnet50"):
        _save_legacy_h5(_fresh(name), tmp_path / BACKBONE_SPECS[name].imagenet_file)
    weights = resolve_weights(str(tmp_path), ["custom", "mobilenet_v2", "resnet50"])
    assert sorted(weights) == ["mobilenet_v2", "resnet50"]
    with pytest.raises(WeightsError, match="no xception_weights.*for backbone xception"):
        resolve_weights(str(tmp_path), ["xception"])


def test_one_file_for_several_backbones_is_refused(tmp_path):
    path = tmp_path / "w.h5"
    _save_legacy_h5(_fresh("mobilenet_v2"), path)
    with pytest.raises(WeightsError, match="one file cannot initialise mobilenet_v2, resnet50"):
        resolve_weights(str(path), ["mobilenet_v2", "resnet50"])


def test_a_file_for_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.h5"
    _save_legacy_h5(_fresh("resnet50"), path)
    weights = resolve_weights(str(path), ["mobilenet_v2"])  # the file itself is fine
    with pytest.raises(WeightsError, match=r"resnet.h5 does not fit backbone mobilenet_v2: .*another architecture"):
        build_model({**HEAD, "backbone": "mobilenet_v2"}, (32, 32, 3), 2, weights=weights)


def test_a_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.h5"
    _save_legacy_h5(_fresh("mobilenet_v2"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="w.h5 is truncated or damaged"):
        resolve_weights(str(path), ["mobilenet_v2"])


def test_an_html_page_saved_as_h5_is_a_clear_error(tmp_path):
    path = tmp_path / "xception_weights.h5"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Access denied</body></html>")
    with pytest.raises(WeightsError, match="is an HTML page, not HDF5 weights"):
        resolve_weights(str(path), ["xception"])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("w.h5", b"not hdf5 at all", "no HDF5 signature"),
        ("w.npz", b"\x89HDF\r\n\x1a\n", "expected a .h5 or .weights.h5 file"),
    ],
)
def test_other_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        resolve_weights(str(path), ["resnet50"])


def test_missing_file_and_none_and_custom_only(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        resolve_weights(str(tmp_path / "nope.h5"), ["resnet50"])
    assert resolve_weights("none", ["resnet50"]) == {}
    assert resolve_weights("imagenet", ["custom"]) == {}  # nothing to download for a custom CNN


def test_imagenet_without_network_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no cached file

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        resolve_weights("imagenet", ["custom", "efficientnet_b0"])
    assert time.perf_counter() - t0 < 5
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ConfigError)
    assert "backbone efficientnet_b0" in message and "efficientnetb0_notop.h5" in message
    assert "-P weights=" in message


def test_imagenet_uses_a_file_already_in_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    _save_legacy_h5(_fresh("mobilenet_v2"), tmp_path / "models" / BACKBONE_SPECS["mobilenet_v2"].imagenet_file)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("no download needed"))
    weights = resolve_weights("imagenet", ["mobilenet_v2"])
    assert weights["mobilenet_v2"].source == "imagenet"
