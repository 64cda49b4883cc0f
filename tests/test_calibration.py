"""medtune.calibration: temperature scaling and split-conformal prediction sets, on fixed scores and on Keras models."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from medtune import calibration, explain, training
from medtune.datasets.synthetic import generate
from medtune.errors import ConfigError
from medtune.metrics import expected_calibration_error
from medtune.models import build_model
from medtune.models.tta import with_flip

pytestmark = pytest.mark.xdist_group("test_calibration")

CLASSES = ["a", "b", "c", "d"]
PARAMS = {"num_blocks": 2, "filters": 4, "dense_units": 8, "learning_rate": 1e-3, "dropout": 0.0}
SIZE = 32


def calibrated_scores(n: int, seed: int = 0, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.6), n)
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


def test_scaling_by_a_temperature_and_by_its_inverse_gives_the_probabilities_back():
    p, _ = calibrated_scores(50)
    np.testing.assert_allclose(calibration.scale(calibration.scale(p, 2.5), 1 / 2.5), p, atol=1e-9)
    assert (calibration.scale(p, 3.0).argmax(1) == p.argmax(1)).all()


def test_the_temperature_of_over_confident_scores_is_above_one_and_lowers_the_ece():
    p, y = calibrated_scores(2000, seed=1)
    sharp = calibration.scale(p, 1 / 3)  # the same ranking, three times too sure
    t = calibration.fit_temperature(sharp, y)
    assert t == pytest.approx(3.0, rel=0.15)
    assert calibration.fit_temperature(p, y) == pytest.approx(1.0, rel=0.15)  # calibrated already
    before, after = expected_calibration_error(y, sharp), expected_calibration_error(y, calibration.scale(sharp, t))
    assert after < before / 2


def test_a_fit_set_without_errors_does_not_drive_the_probabilities_to_certainty():
    """All 400 right: plain labels would push T to its 0.05 bound and every probability to 0 or 1."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    margin = rng.uniform(1.0, 4.0, 400) * np.where(y == 1, 1, -1)  # logit of class 1 minus class 0, every sign right
    p = np.stack([1 / (1 + np.exp(margin)), 1 / (1 + np.exp(-margin))], axis=1)
    t = calibration.fit_temperature(p, y)
    scaled = calibration.scale(p, t).astype(np.float32)
    assert 0.1 < t < 1.0  # sharper than the network, far from the bound
    assert scaled.max() < 1.0 and scaled.min() > 0.0  # nothing certain in float32, as a served model computes
    assert scaled.max(axis=1).mean() < (200 + 1) / (200 + 2)  # no surer on average than 200 images per class show


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_coverage_on_held_out_scores_is_within_the_finite_sample_bound(level):
    """Over random calibration/test splits of fixed scores, mean coverage lies in [level, level + 1/(n+1)]."""
    p, y = calibrated_scores(1200, seed=2)
    rng = np.random.default_rng(3)
    n_cal, coverage = 200, []
    for _ in range(400):
        order = rng.permutation(len(y))
        cal, test = order[:n_cal], order[n_cal:]
        threshold = calibration.conformal_threshold(p[cal], y[cal], level)
        sets = calibration.prediction_set(p[test], CLASSES, {"conformal_threshold": threshold})
        coverage.append(np.mean([CLASSES[t] in s for t, s in zip(y[test], sets)]))
    mean, se = np.mean(coverage), np.std(coverage) / math.sqrt(len(coverage))
    assert level - 3 * se <= mean <= level + 1 / (n_cal + 1) + 3 * se, (mean, se)


def test_sets_are_never_empty_ordered_by_probability_and_grow_with_the_level():
    p, y = calibrated_scores(300, seed=4)
    small = calibration.prediction_set(p, CLASSES, {"conformal_threshold": calibration.conformal_threshold(p, y, 0.5)})
    large = calibration.prediction_set(p, CLASSES, {"conformal_threshold": calibration.conformal_threshold(p, y, 0.95)})
    assert all(s for s in small) and all(set(a) <= set(b) for a, b in zip(small, large))
    assert np.mean([len(s) for s in large]) > np.mean([len(s) for s in small])
    for row, s in zip(p, large):
        assert [CLASSES[j] for j in np.argsort(-row)][: len(s)] == s
    top_only = calibration.prediction_set(p[:3], CLASSES, {})  # a model logged without a threshold
    assert top_only == [[CLASSES[row.argmax()]] for row in p[:3]]
    assert calibration.prediction_set(p[:2], CLASSES, {"conformal_threshold": 1.01}) == top_only[:2]


def test_too_few_calibration_images_for_the_level_give_every_class():
    p, y = calibrated_scores(5)
    assert calibration.conformal_threshold(p, y, 0.9) == 0.0  # ceil(6 * 0.9) = 6 > 5
    with pytest.raises(ConfigError, match="conformal_level=1.5"):
        calibration.conformal_threshold(p, y, 1.5)


def test_validation_is_halved_within_each_class():
    y = np.repeat(np.arange(3), [10, 7, 1])
    fit, cal = calibration.split_validation(y, seed=0)
    assert sorted(np.concatenate([fit, cal]).tolist()) == list(range(len(y))) and not set(fit) & set(cal)
    assert [int((y[fit] == c).sum()) for c in range(3)] == [5, 3, 0]


@pytest.fixture(scope="module")
def images():
    x, y, _ = generate(6, SIZE, seed=2)
    return x, y


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return build_model(PARAMS, (SIZE, SIZE, 3), 4)


def test_the_keras_temperature_matches_numpy_saves_loads_and_keeps_gradcam(images, tmp_path):
    import medtune.models.layers  # noqa: F401 - what serving imports before loading

    x, _ = images
    base = with_flip(_model())  # a temperature over test-time flipping: Grad-CAM must reach the flip inside
    plain = training.predict_proba(base, x)
    heat_plain, _ = explain.gradcam(base, x[:4])
    wrapped = calibration.with_temperature(base, 0.3)
    np.testing.assert_allclose(training.predict_proba(wrapped, x), calibration.scale(plain, 0.3), atol=1e-5)
    path = tmp_path / "tempered.keras"
    wrapped.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(training.predict_proba(loaded, x), training.predict_proba(wrapped, x), atol=1e-6)
    assert calibration.temperature_of(loaded) == pytest.approx(0.3) and calibration.uncalibrated(base) is None
    heat, proba = explain.gradcam(loaded, x[:4])
    np.testing.assert_allclose(heat, heat_plain, atol=1e-4)
    np.testing.assert_allclose(proba, calibration.scale(plain[:4], 0.3), atol=1e-5)


def test_calibrate_on_an_over_confident_model_lowers_validation_ece_and_keeps_accuracy(images):
    x, y = images
    model = training.compile_model(_model(), PARAMS)
    model.fit(x.astype("float32"), keras.utils.to_categorical(y, 4), epochs=3, batch_size=8, verbose=0)
    logits = model.get_layer("logits")
    logits.set_weights([w * 6.0 for w in logits.get_weights()])  # over-confident on purpose
    before = training.predict_proba(model, x)
    calibrated, fit = calibration.calibrate(model, x, y, level=0.9)
    after = training.predict_proba(calibrated, x)
    assert fit.temperature > 1.5 and fit.val_ece_after < fit.val_ece_before
    assert (after.argmax(1) == before.argmax(1)).all()
    assert fit.metadata() == {
        "temperature": fit.temperature,
        "conformal_level": 0.9,
        "conformal_threshold": fit.conformal_threshold,
        "operating_thresholds": None,  # four classes: no binary operating point
    }
    same, off = calibration.calibrate(model, x, y, enabled=False)
    assert same is model and off.temperature == 1.0


def test_a_binary_models_operating_point_is_chosen_on_validation_and_read_on_other_images():
    from medtune.metrics import operating_point_metrics, operating_thresholds

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [300, 100])  # 25 % positives
    score = np.clip(rng.normal(np.where(y == 1, 0.7, 0.35), 0.15), 0, 1)
    proba = np.stack([1 - score, score], axis=1)
    thresholds = operating_thresholds(y, proba, 0.9)
    # at the threshold, at most 10 % of the negatives are called positive, and it is the lowest such threshold
    assert np.mean(score[y == 0] >= thresholds[1]) <= 0.1
    assert np.mean(score[y == 0] >= np.max(score[(y == 0) & (score < thresholds[1])])) > 0.1
    # other images from the same source: near 90 % specificity, not exactly (it was chosen elsewhere)
    y2 = np.repeat([0, 1], [3000, 1000])
    s2 = np.clip(rng.normal(np.where(y2 == 1, 0.7, 0.35), 0.15), 0, 1)
    m = operating_point_metrics(y2, np.stack([1 - s2, s2], axis=1), thresholds, ["none", "tumour"])
    assert 0.85 < m["test_specificity_at_operating_point_tumour"] < 0.95
    assert 0.6 < m["test_sensitivity_at_operating_point_tumour"] < 1.0
    assert set(m) == {
        f"test_{w}_at_operating_point_{c}" for w in ("sensitivity", "specificity") for c in ("none", "tumour")
    }
    assert operating_thresholds(np.array([0, 1, 2]), np.eye(3), 0.9) is None  # not a two-class task
    # calibrate() chooses it on the calibration half (here of given out-of-fold probabilities) for the metadata
    same, fit = calibration.calibrate(None, None, y, enabled=False, proba=proba)
    _, cal = calibration.split_validation(y)
    assert same is None and fit.metadata()["operating_thresholds"] == operating_thresholds(y[cal], proba[cal], 0.9)
