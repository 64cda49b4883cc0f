"""medtune.evaluation on fixed predictions: metrics and tables checked against a hand computation.

tests/test_metrics.py checks medtune.metrics in depth; here the point is that evaluate_model
feeds the images to the model in order, and that its metrics, predictions table, confusion
matrix, report and galleries agree with numbers worked out by hand.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from medtune.evaluation import evaluate_model, gradcam_galleries

CLASSES = ["glioma tumor", "no_tumor", "pituitary"]
Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array(
    [
        [0.72, 0.18, 0.10],  # s0 y=0 pred 0 ok   conf .72
        [0.25, 0.70, 0.05],  # s1 y=0 pred 1 miss conf .7
        [0.05, 0.90, 0.05],  # s2 y=1 pred 1 ok   conf .9
        [0.18, 0.72, 0.10],  # s3 y=1 pred 1 ok   conf .72
        [0.05, 0.05, 0.90],  # s4 y=2 pred 2 ok   conf .9
        [0.70, 0.05, 0.25],  # s5 y=2 pred 0 miss conf .7
    ],
    dtype=np.float32,
)
# Confusion (rows true, cols pred): [[1,1,0],[0,2,0],[1,0,1]]
# class 0: TP1 FP1 FN1 TN3 -> P=1/2 R=1/2 spec=3/4 F1=1/2
# class 1: TP2 FP1 FN0 TN3 -> P=2/3 R=1   spec=3/4 F1=4/5
# class 2: TP1 FP0 FN1 TN4 -> P=1   R=1/2 spec=1   F1=2/3


class FixedModel:
    """Stands in for a Keras model: returns fixed probabilities, records the images it was given."""

    def __init__(self, proba):
        self.proba = np.asarray(proba, np.float32)
        self.seen = np.zeros((0,), np.float32)

    def predict_on_batch(self, batch):
        start = len(self.seen)
        self.seen = np.concatenate([self.seen.reshape(-1, *batch.shape[1:]), np.asarray(batch)])
        return self.proba[start : len(self.seen)]


def _images(n=len(Y), size=8):
    x = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        x[i] = i * 10  # image i is constant 10*i: shows the order the model saw
    return x


def test_evaluate_model_metrics_match_hand_computation():
    model = FixedModel(P)
    x = _images()
    ev = evaluate_model(model, x, Y, CLASSES, [f"img{i}.png" for i in range(6)], with_gradcam=False)
    np.testing.assert_array_equal(model.seen[:, 0, 0, 0], np.arange(6) * 10)  # all images, in order
    m = ev.metrics
    assert all(k.startswith("test_") for k in m)
    assert m["test_accuracy"] == pytest.approx(4 / 6)
    assert m["test_balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["test_macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)  # 59/90
    assert m["test_weighted_f1"] == pytest.approx(59 / 90)  # equal supports
    expected = {
        "precision": [1 / 2, 2 / 3, 1.0],
        "recall": [1 / 2, 1.0, 1 / 2],
        "specificity": [3 / 4, 3 / 4, 1.0],
        "f1": [1 / 2, 4 / 5, 2 / 3],
    }
    for name, values in expected.items():
        for key, value in zip(["glioma_tumor", "no_tumor", "pituitary"], values):
            assert m[f"test_{name}_{key}"] == pytest.approx(value), (name, key)
    # p(true) = .72 .25 .9 .72 .9 .25
    assert m["test_log_loss"] == pytest.approx(-(math.log(0.72) + math.log(0.25) + math.log(0.9)) / 3, rel=1e-5)
    # ECE (15 bins): (2/3, 11/15] holds s0 s1 s3 s5 (acc 1/2, mean conf .71, gap .21),
    # (13/15, 14/15] holds s2 s4 (acc 1, conf .9, gap .1)
    assert m["test_ece"] == pytest.approx(4 / 6 * 0.21 + 2 / 6 * 0.1, abs=1e-6)
    # AUC one-vs-rest by counting (positive, negative) pairs ranked right, no ties:
    # class 0: .72 beats all 4 negatives, .25 beats 3 (not s5's .70) -> 7/8; classes 1, 2: 8/8
    assert m["test_roc_auc_macro"] == pytest.approx((7 / 8 + 1.0 + 1.0) / 3)
    assert m["test_roc_auc_weighted"] == pytest.approx((7 / 8 + 1.0 + 1.0) / 3)  # equal supports

    np.testing.assert_array_equal(ev.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert ev.report["glioma tumor"]["recall"] == pytest.approx(0.5)
    assert ev.report["no_tumor"]["precision"] == pytest.approx(2 / 3)
    assert ev.report["pituitary"]["support"] == 2
    assert "glioma tumor" in ev.report_text and "pituitary" in ev.report_text
    assert sorted(ev.roc) == [0, 1, 2] and ev.roc[0][2] == pytest.approx(7 / 8)
    assert ev.reliability["ece"] == pytest.approx(m["test_ece"])
    assert ev.galleries == {}

    table = ev.predictions
    assert list(table.columns) == [
        "path",
        "true",
        "pred",
        "confidence",
        "correct",
        "prob_glioma_tumor",
        "prob_no_tumor",
        "prob_pituitary",
    ]
    assert table["path"].tolist() == [f"img{i}.png" for i in range(6)]
    assert table["true"].tolist() == ["glioma tumor", "glioma tumor", "no_tumor", "no_tumor", "pituitary", "pituitary"]
    assert table["pred"].tolist() == ["glioma tumor", "no_tumor", "no_tumor", "no_tumor", "pituitary", "glioma tumor"]
    assert table["correct"].tolist() == [True, False, True, True, True, False]
    np.testing.assert_allclose(table["confidence"], [0.72, 0.7, 0.9, 0.72, 0.9, 0.7], atol=1e-6)
    np.testing.assert_allclose(table[["prob_glioma_tumor", "prob_no_tumor", "prob_pituitary"]].to_numpy(), P, atol=1e-6)


def test_prediction_sets_their_coverage_and_size_come_with_a_conformal_threshold():
    ev = evaluate_model(FixedModel(P), _images(), Y, CLASSES, with_gradcam=False, metadata={"conformal_threshold": 0.2})
    # p >= .2: s0 {0}, s1 {1, 0}, s2 {1}, s3 {1}, s4 {2}, s5 {0, 2}: every set holds the true class
    assert ev.sets == [
        ["glioma tumor"],
        ["no_tumor", "glioma tumor"],
        ["no_tumor"],
        ["no_tumor"],
        ["pituitary"],
        ["glioma tumor", "pituitary"],
    ]
    assert ev.metrics["test_set_coverage"] == 1.0 and ev.metrics["test_mean_set_size"] == pytest.approx(8 / 6)
    assert ev.predictions["prediction_set"][1] == "no_tumor | glioma tumor"
    plain = evaluate_model(FixedModel(P), _images(), Y, CLASSES, with_gradcam=False, metadata={})
    assert plain.sets is None and "test_set_coverage" not in plain.metrics


def test_a_binary_models_operating_point_from_its_metadata_is_read_on_the_test_images():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]], np.float32)
    y = np.array([0, 0, 0, 1, 1])
    meta = {"operating_thresholds": [0.5, 0.6]}  # "tumour" called from p >= 0.6
    ev = evaluate_model(FixedModel(proba), _images(5), y, ["none", "tumour"], with_gradcam=False, metadata=meta)
    # tumour: called for images 2 and 4: sensitivity 1/2 (image 3's 0.55 is under), specificity 2/3
    assert ev.metrics["test_sensitivity_at_operating_point_tumour"] == pytest.approx(1 / 2)
    assert ev.metrics["test_specificity_at_operating_point_tumour"] == pytest.approx(2 / 3)
    assert ev.metrics["test_sensitivity_at_operating_point_none"] == pytest.approx(2 / 3)  # p(none) >= 0.5
    plain = evaluate_model(FixedModel(proba), _images(5), y, ["none", "tumour"], with_gradcam=False, metadata={})
    assert not any("operating_point" in k for k in plain.metrics)


def test_evaluate_model_without_paths_numbers_rows():
    ev = evaluate_model(FixedModel(P), _images(), Y, CLASSES, with_gradcam=False)
    assert ev.predictions["path"].tolist() == [f"#{i}" for i in range(6)]


def _tiny_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def test_galleries_pick_the_most_confident_correct_and_capped_misclassified_images():
    x = np.random.default_rng(0).integers(0, 256, (9, 8, 8, 3)).astype(np.uint8)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    proba = np.array(
        [
            [0.6, 0.3, 0.1],  # 0 ok
            [0.9, 0.05, 0.05],  # 1 ok (most confident)
            [0.2, 0.7, 0.1],  # 2 wrong (-> 1, conf .7)
            [0.1, 0.1, 0.8],  # 3 wrong (-> 2, conf .8)
            [0.1, 0.8, 0.1],  # 4 ok
            [0.5, 0.4, 0.1],  # 5 wrong
            [0.2, 0.7, 0.1],  # 6 ok
            [0.6, 0.2, 0.2],  # 7 wrong
            [0.3, 0.3, 0.4],  # 8 ok
        ],
        dtype=np.float32,
    )
    galleries = gradcam_galleries(_tiny_cnn(), x, y, proba, CLASSES, correct_per_class=1, max_misclassified_per_class=1)
    assert sorted(galleries) == sorted(CLASSES)
    first = galleries["glioma tumor"]
    assert [it.correct for it in first] == [True, False]
    np.testing.assert_array_equal(first[0].image, x[1])  # the most confident correct one
    np.testing.assert_array_equal(first[1].image, x[3])  # the most confident mistake, capped at 1
    assert first[1].title == "true glioma tumor\npred pituitary (0.80)"
    for items in galleries.values():
        for it in items:
            assert it.heatmap.shape == (8, 8) and np.isfinite(it.heatmap).all()
            assert 0.0 <= it.heatmap.min() and it.heatmap.max() <= 1.0


# --- Grad-CAM on the CNNs the search builds ---------------------------------------------------


def _cnn_params(variant: str) -> dict:
    return {
        "num_blocks": 3,
        "filters": 16,
        "kernel_size": 3,
        "conv_type": "separable" if variant == "separable" else "standard",
        "residual": variant == "residual",
        "batch_norm": True,
        "dropout": 0.1,
        "l2": 1e-5,
        "dense_units": 64,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "batch_size": 32,
        "augment": 0.0,
    }


@pytest.mark.parametrize("variant", ["standard", "residual", "separable"])
def test_gradcam_finds_the_last_feature_map_of_every_searched_architecture(variant):
    from medtune.explain import find_last_conv_layer, gradcam
    from medtune.models import build_model
    from medtune.models.cnn import LAST_CONV_LAYER

    keras.utils.set_random_seed(0)
    model = build_model(_cnn_params(variant), (32, 32, 3), 4)
    assert find_last_conv_layer(model) == [LAST_CONV_LAYER]
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    heat, proba = gradcam(model, x)
    assert heat.shape == (3, 32, 32) and np.isfinite(heat).all() and heat.max() <= 1.0
    np.testing.assert_allclose(proba, model.predict(x.astype("float32"), verbose=0), atol=1e-5)


@pytest.mark.slow
def test_gradcam_of_a_trained_cnn_concentrates_on_the_lesion():
    """A small custom CNN trained on `synthetic` (raw 0..255 pixels in) looks at the lesion, whose
    footprint the generator records: heat inside it is many times what a uniform map would put there."""
    from medtune import training
    from medtune.datasets.synthetic import generate
    from medtune.explain import gradcam
    from medtune.models import build_model
    from tests.helpers import lesion_focus

    training.configure_threads()
    x, y, masks = generate(100, 64, seed=3)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:300], order[300:]
    keras.utils.set_random_seed(0)
    params = _cnn_params("standard")
    model = training.compile_model(build_model(params, (64, 64, 3), 4), params)
    training.fit(
        model,
        training.make_dataset(x[train], y[train], 4, 32, training=True, seed=0),
        training.make_dataset(x[test], y[test], 4, 64, training=False),
        y_val=y[test],
        epochs=8,
    )

    proba = training.predict_proba(model, x[test])
    correct = proba.argmax(1) == y[test]
    assert correct.mean() >= 0.5, correct.mean()  # learned (chance is 0.25); typically ~0.85
    heat, _ = gradcam(model, x[test][correct], class_indices=y[test][correct])
    own, control = lesion_focus(heat, masks[test][correct])
    # the lesion covers ~5 % of the image; a uniform heatmap scores 1.0, a centre-favouring one
    # as much as the control (other images' lesions); typically ~8 against ~4 here
    assert own > 1.5 * control > 1.5, (own, control)
