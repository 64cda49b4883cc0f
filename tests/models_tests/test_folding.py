"""BatchNorm folded into convolutions: the same probabilities, the same gradients, the same heatmaps."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtune import explain, training
from medtune.models import build_model
from medtune.models.folding import FoldedConv, fold_batchnorm, inference_view, training_view
from medtune.models.transfer import Stage, set_stage
from medtune.models.weights import resolve_weights

SIZE = 64
LITE0 = {
    "backbone": "efficientnet_lite0",
    "dense_units": 32,
    "dropout": 0.0,
    "fine_tune_layers": 60,
    "learning_rate": 1e-3,
}
CNN = {"backbone": "custom", "filters": 8, "num_blocks": 2, "batch_norm": True, "dense_units": 16}


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3)).astype("float32")


def _random_statistics(model, seed: int = 0) -> None:
    """Moving statistics and affine terms far from their initial values, so a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, n))


@pytest.fixture(scope="module")
def lite0_weights():
    return resolve_weights("imagenet", ["efficientnet_lite0"])


def _lite0(weights, stage: int):
    keras.utils.set_random_seed(0)
    model = build_model(LITE0, (SIZE, SIZE, 3), 3, weights=weights)
    set_stage(model, Stage(stage, 0, 1, 1e-3, LITE0["fine_tune_layers"] if stage == 2 else 0))
    return model


def test_a_folded_cnn_predicts_what_the_unfolded_one_does():
    keras.utils.set_random_seed(0)
    model = build_model(CNN, (SIZE, SIZE, 3), 3)
    _random_statistics(model)
    folded = inference_view(model)
    assert any(isinstance(layer, FoldedConv) for layer in folded._flatten_layers())
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    x = _images()
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)
    assert training.predict_proba(model, x).shape == (6, 3)
    assert inference_view(model) is folded  # built once per model
    assert training_view(model) is model  # trainable BatchNorm: trained as it is


@pytest.mark.parametrize("stage", [1, 2])
def test_a_folded_lite0_predicts_what_the_unfolded_one_does(lite0_weights, stage):
    model = _lite0(lite0_weights, stage)
    _random_statistics(model)
    folded = fold_batchnorm(model)  # frozen BatchNorm only: what training runs
    assert sum(isinstance(layer, FoldedConv) for layer in folded._flatten_layers()) == 49
    assert {id(v) for v in folded.trainable_weights} == {id(v) for v in model.trainable_weights}
    x = _images()
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_one_training_step_through_the_fold_gives_the_plain_steps_weights(lite0_weights):
    x = _images(8)
    y = np.eye(3, dtype="float32")[np.arange(8) % 3]
    after = []
    for fold in (False, True):
        model = _lite0(lite0_weights, 2)
        net = training_view(model) if fold else model
        assert (net is not model) == fold
        training.compile_model(net, {**LITE0, "optimizer": "sgd", "momentum": 0.0, "learning_rate": 0.05})
        before = [w.numpy() for w in model.trainable_weights]
        net.train_on_batch(x, y)
        after.append([w.numpy() for w in model.trainable_weights])  # the original's own variables moved
        assert any(not np.allclose(a, b) for a, b in zip(before, after[-1], strict=True))
    for plain, folded in zip(*after, strict=True):
        np.testing.assert_allclose(folded, plain, atol=1e-5, rtol=1e-4)


def test_a_folded_model_saves_loads_and_explains_like_the_unfolded_one(lite0_weights, tmp_path):
    model = _lite0(lite0_weights, 2)
    _random_statistics(model)
    folded = inference_view(model)
    path = tmp_path / "folded.keras"
    folded.save(path)
    loaded = keras.models.load_model(path, compile=False)
    x = _images(4)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)
    heat, proba = explain.gradcam(model, x)
    heat_folded, proba_folded = explain.gradcam(folded, x)
    np.testing.assert_allclose(proba_folded, proba, atol=1e-5)
    np.testing.assert_allclose(heat_folded, heat, atol=1e-4)
