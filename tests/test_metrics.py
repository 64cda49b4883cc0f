"""Metrics checked against numbers worked out by hand."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medtune.errors import ConfigError
from medtune.metrics import (
    classification_metrics,
    classification_report_dict,
    classification_report_text,
    confusion,
    expected_calibration_error,
    reliability_bins,
    roc_curves,
    safe_key,
)

NAMES = ["Acne and Rosacea Photos", "nevus", "mel/other"]
KEYS = ["Acne_and_Rosacea_Photos", "nevus", "mel/other"]

# 3 classes, 8 samples. Confidences avoid the 15-bin edges (multiples of 1/15).
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
P = np.array(
    [
        [0.70, 0.20, 0.10],  # s0 y=0 pred 0 ok   conf .7
        [0.50, 0.30, 0.20],  # s1 y=0 pred 0 ok   conf .5
        [0.30, 0.50, 0.20],  # s2 y=0 pred 1 miss conf .5
        [0.10, 0.70, 0.20],  # s3 y=1 pred 1 ok   conf .7
        [0.20, 0.50, 0.30],  # s4 y=1 pred 1 ok   conf .5
        [0.05, 0.25, 0.70],  # s5 y=1 pred 2 miss conf .7
        [0.05, 0.05, 0.90],  # s6 y=2 pred 2 ok   conf .9
        [0.20, 0.50, 0.30],  # s7 y=2 pred 1 miss conf .5
    ]
)
# Confusion (rows true, cols pred): [[2,1,0],[0,2,1],[0,1,1]]
# class 0: TP2 FP0 FN1 TN5 -> P=1,   R=2/3, spec=5/5=1,  F1=2*(2/3)/(5/3)=4/5
# class 1: TP2 FP2 FN1 TN3 -> P=1/2, R=2/3, spec=3/5,    F1=(2/3)/(7/6)=4/7
# class 2: TP1 FP1 FN1 TN5 -> P=1/2, R=1/2, spec=5/6,    F1=1/2
EXPECTED_PER_CLASS = {
    "precision": [1.0, 1 / 2, 1 / 2],
    "recall": [2 / 3, 2 / 3, 1 / 2],
    "specificity": [1.0, 3 / 5, 5 / 6],
    "f1": [4 / 5, 4 / 7, 1 / 2],
}


def test_safe_key_replaces_spaces_and_unsafe_characters():
    assert safe_key("Acne and Rosacea Photos") == "Acne_and_Rosacea_Photos"
    assert safe_key("  a  b ") == "a_b"
    assert safe_key("Eczema (atopic), 2%") == "Eczema__atopic___2_"
    assert safe_key("mel/other-1.0") == "mel/other-1.0"


def test_classification_metrics_match_hand_computed_values():
    m = classification_metrics(Y, P, NAMES, prefix="test_")
    assert all(type(v) is float for v in m.values())
    assert m["test_accuracy"] == pytest.approx(5 / 8)  # s0 s1 s3 s4 s6
    assert m["test_balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)  # 11/18
    assert m["test_macro_f1"] == pytest.approx((4 / 5 + 4 / 7 + 1 / 2) / 3)  # 131/210
    # weighted by support 3, 3, 2: (12/5 + 12/7 + 1) / 8 = 179/280
    assert m["test_weighted_f1"] == pytest.approx(179 / 280)
    for metric, values in EXPECTED_PER_CLASS.items():
        for key, value in zip(KEYS, values):
            assert m[f"test_{metric}_{key}"] == pytest.approx(value), (metric, key)
    # log loss: mean of -ln p(true) = .7 .5 .3 .7 .5 .25 .9 .3
    ll = -(2 * math.log(0.7) + 2 * math.log(0.5) + 2 * math.log(0.3) + math.log(0.25) + math.log(0.9)) / 8
    assert m["test_log_loss"] == pytest.approx(ll)
    # ECE bins: conf .5 -> s1 s2 s4 s7: acc 2/4, gap 0; conf .7 -> s0 s3 s5: acc 2/3, gap 1/30;
    # conf .9 -> s6: acc 1, gap .1.  ECE = 3/8 * 1/30 + 1/8 * 0.1 = 0.025
    assert m["test_ece"] == pytest.approx(0.025)
    # AUC one-vs-rest, by counting pairs (ties count 1/2):
    # class 0: positives .7 .5 .3 all above negatives .1 .2 .05 .05 .2      -> 15/15
    # class 1: positives .7 .5 .25 vs .2 .3 .5 .05 .5: 5 + (3 + 2*.5) + 2   -> 11/15
    # class 2: positives .9 .3 vs .1 .2 .2 .2 .3 .7: 6 + (4 + .5)           -> 10.5/12
    aucs = [1.0, 11 / 15, 10.5 / 12]
    assert m["test_roc_auc_macro"] == pytest.approx(sum(aucs) / 3)
    weighted = (3 * aucs[0] + 3 * aucs[1] + 2 * aucs[2]) / 8
    assert m["test_roc_auc_weighted"] == pytest.approx(weighted)


def test_hand_case_agrees_with_sklearn():
    m = classification_metrics(Y, P, NAMES, prefix="")
    pred = P.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, pred, average="macro"))
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(Y, P, multi_class="ovr"))
    assert m["roc_auc_weighted"] == pytest.approx(skm.roc_auc_score(Y, P, multi_class="ovr", average="weighted"))


def test_confusion_and_reliability_bins_hand_case():
    np.testing.assert_array_equal(confusion(Y, P.argmax(1), 3), [[2, 1, 0], [0, 2, 1], [0, 1, 1]])
    bins = reliability_bins(Y, P)
    assert len(bins["edges"]) == 16 and bins["counts"].sum() == 8
    # .5 falls in (7/15, 8/15] -> bin 7; .7 in (10/15, 11/15] -> bin 10; .9 -> bin 13
    assert {i: int(c) for i, c in enumerate(bins["counts"]) if c} == {7: 4, 10: 3, 13: 1}
    assert bins["accuracy"][10] == pytest.approx(2 / 3)
    assert bins["confidence"][10] == pytest.approx(0.7)
    assert np.isnan(bins["accuracy"][0])
    assert expected_calibration_error(Y, P) == pytest.approx(0.025)


def test_classification_report_lists_every_class():
    rep = classification_report_dict(Y, P.argmax(1), NAMES)
    assert rep["nevus"]["precision"] == pytest.approx(0.5)
    assert rep["Acne and Rosacea Photos"]["recall"] == pytest.approx(2 / 3)
    text = classification_report_text(Y, P.argmax(1), NAMES)
    assert "Acne and Rosacea Photos" in text and "macro avg" in text


def test_binary_case():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    proba = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, proba, ["benign", "malignant"], prefix="val_")
    # preds 0 1 0 1 -> accuracy 1/2; AUC: .4 beats .1, .9 beats both -> 3/4
    assert m["val_accuracy"] == pytest.approx(0.5)
    assert m["val_roc_auc_macro"] == pytest.approx(0.75)
    assert m["val_roc_auc_weighted"] == pytest.approx(0.75)
    assert m["val_recall_malignant"] == pytest.approx(0.5)
    assert m["val_specificity_malignant"] == pytest.approx(0.5)
    curves = roc_curves(y, proba, 2)
    assert set(curves) == {0, 1} and curves[1][2] == pytest.approx(0.75)


def test_missing_class_is_left_out_of_auc_with_warning(caplog):
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
    with caplog.at_level(logging.WARNING, logger="medtune.metrics"):
        m = classification_metrics(y, proba, ["a", "b", "c c"])
    assert "c c" in caplog.text
    # class 0 scores: .8 .4 | .2 .1 -> 1; class 1 scores: .7 .3 | .1 .5 -> (2 + 1)/4
    assert m["test_roc_auc_macro"] == pytest.approx((1.0 + 0.75) / 2)
    assert all(math.isfinite(v) for v in m.values())
    assert m["test_recall_c_c"] == 0.0 and m["test_precision_c_c"] == 0.0
    assert m["test_balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert set(roc_curves(y, proba, 3)) == {0, 1}


def test_single_class_auc_is_nan():
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), ["a", "b"])
    assert math.isnan(m["test_roc_auc_macro"]) and m["test_accuracy"] == 0.5


def test_perfect_prediction():
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.eye(3)[y]
    m = classification_metrics(y, proba, ["a", "b", "c"], prefix="")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "roc_auc_macro"):
        assert m[key] == pytest.approx(1.0), key
    assert m["ece"] == pytest.approx(0.0)
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-6)
    assert all(m[f"specificity_{c}"] == 1.0 for c in "abc")


def test_colliding_class_keys_raise():
    with pytest.raises(ConfigError):
        classification_metrics(np.array([0, 1]), np.eye(2), ["a b", "a_b"])


def test_binary_tasks_report_sensitivity_at_90_percent_specificity():
    from medtune.metrics import classification_metrics

    neg = np.arange(10) / 10  # ten negatives scored 0.0 .. 0.9
    pos = np.array([0.85, 0.65, 0.35, 0.05])
    p_pos = np.concatenate([neg, pos])
    y = np.array([0] * 10 + [1] * 4)
    proba = np.stack([1 - p_pos, p_pos], axis=1)
    m = classification_metrics(y, proba, ["normal", "tumour"], prefix="")
    # specificity >= 0.9 allows one false positive (the negative at 0.9): only the positive at 0.85 is caught
    assert m["sensitivity_at_specificity_90_tumour"] == pytest.approx(0.25)
    three = classification_metrics(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"], prefix="")
    assert not any(k.startswith("sensitivity_at") for k in three)
