"""An ensemble is one Keras model: averaged probabilities, saved and loaded, explained by averaged Grad-CAM."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtune import training
from medtune.explain import gradcam
from medtune.models import build_model
from medtune.models.ensemble import build_ensemble, members_of

PARAMS = {"num_blocks": 2, "filters": 4, "dense_units": 8, "dropout": 0.0}


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    training.release_model()


def _members(k=2):
    out = []
    for seed in range(k):
        keras.utils.set_random_seed(seed)
        out.append(build_model(PARAMS, (24, 24, 1), 3))
    return out


def test_the_ensemble_averages_its_members_probabilities(tmp_path):
    import medtune.models.layers  # noqa: F401 - as medtune.serving does before loading

    members = _members(3)
    x = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 1)).astype(np.float32)
    expected = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    ensemble = build_ensemble(members)
    assert [m.name for m in members_of(ensemble)] == ["ensemble_member_0", "ensemble_member_1", "ensemble_member_2"]
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, atol=1e-6)
    ensemble.save(tmp_path / "e.keras")
    again = keras.models.load_model(tmp_path / "e.keras", compile=False)
    assert len(members_of(again)) == 3
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, atol=1e-6)
    assert members_of(members[0]) == []


def test_gradcam_of_an_ensemble_is_the_mean_of_its_members_heatmaps():
    members = _members(2)
    ensemble = build_ensemble(members)
    x = np.random.default_rng(1).integers(0, 256, (3, 24, 24, 1)).astype(np.float32)
    heat, proba = gradcam(ensemble, x)
    cls = proba.argmax(1)
    each = [gradcam(m, x, cls)[0] for m in members]
    assert heat.shape == (3, 24, 24)
    np.testing.assert_allclose(heat, np.mean(each, axis=0), atol=1e-5)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)


def test_members_must_agree():
    keras.utils.set_random_seed(0)
    with pytest.raises(ValueError, match="at least 2 members"):
        build_ensemble(_members(1))
    other = build_model(PARAMS, (24, 24, 1), 4)
    with pytest.raises(ValueError, match="ensemble members differ"):
        build_ensemble([_members(1)[0], other])
