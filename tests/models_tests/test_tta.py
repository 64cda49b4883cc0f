"""Test-time flipping as one Keras model: predictions, saving, Grad-CAM, and final training's choice."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtune import explain, training
from medtune.datasets.synthetic import generate
from medtune.models import build_model
from medtune.models.tta import base_of, with_flip

pytestmark = pytest.mark.xdist_group("test_tta")  # one worker: the module's fixture built once

PARAMS = {"num_blocks": 2, "filters": 4, "dense_units": 8, "learning_rate": 1e-3, "dropout": 0.0}
SIZE = 32


@pytest.fixture(scope="module")
def images():
    x, y, _ = generate(3, SIZE, seed=2)
    return x, y


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return build_model(PARAMS, (SIZE, SIZE, 3), 4)


def test_the_prediction_is_the_mean_over_the_image_and_its_mirror(images):
    x, _ = images
    base = _model()
    alone = training.predict_proba(base, x)
    mirrored = training.predict_proba(base, np.ascontiguousarray(x[:, :, ::-1]))
    wrapped = with_flip(base)
    np.testing.assert_allclose(training.predict_proba(wrapped, x), (alone + mirrored) / 2, atol=1e-5)
    assert base_of(wrapped) is base and base_of(base) is None


def test_a_saved_flip_model_loads_and_predicts_the_same(images, tmp_path):
    import medtune.models.layers  # noqa: F401 - what serving imports before loading

    x, _ = images
    wrapped = with_flip(_model())
    path = tmp_path / "tta.keras"
    wrapped.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(training.predict_proba(loaded, x), training.predict_proba(wrapped, x), atol=1e-6)
    assert base_of(loaded) is not None


def test_gradcam_averages_the_heatmap_and_the_mirrored_heatmap_of_the_mirror(images):
    x, _ = images
    base = _model()
    wrapped = with_flip(base)
    heat, proba = explain.gradcam(wrapped, x[:4])
    target = proba.argmax(1)
    direct = explain.gradcam(base, x[:4], target)[0]
    mirrored = explain.gradcam(base, np.ascontiguousarray(x[:4, :, ::-1]), target)[0][:, :, ::-1]
    expected = (direct + mirrored) / 2
    peak = expected.reshape(4, -1).max(1)
    expected = np.where(peak[:, None, None] > 0, expected / np.maximum(peak, 1e-12)[:, None, None], 0)
    assert heat.shape == (4, SIZE, SIZE)
    np.testing.assert_allclose(heat, expected, atol=1e-4)


@pytest.mark.parametrize("mode", ["auto", "flip", "none"])
def test_final_training_adds_the_flip_only_when_validation_says_so(images, mode):
    from medtune.training.final import choose_flip

    x, y = images
    base = _model(seed=3)
    chosen, used, scores = choose_flip(base, x, y, mode)
    if mode == "none":
        assert chosen is base and not used and scores == {}
        return
    flipped = mode == "flip" or scores["flip"] > scores["plain"]
    assert (base_of(chosen) is base) is flipped and used is flipped
