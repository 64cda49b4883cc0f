"""The model card from plain values: bootstrap intervals, content, Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtune import bootstrap, calibration, metrics
from medtune import model_card as mc
from medtune.evaluation import GalleryItem

CLASSES = ["crescent", "disc", "ring | tumour", "speckled"]  # a pipe: Markdown tables must escape it


def predictions(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    p = rng.dirichlet(np.ones(4), len(y))
    p[np.arange(len(y)), y] += rng.uniform(0, 1.2, len(y))
    return y, np.round(p / p.sum(1, keepdims=True), 3)


def make_card(gate=True, n_resamples=300, sets=None):
    y, p = predictions()
    scores = metrics.classification_metrics(y, p, CLASSES)
    model = mc.ModelInfo(
        "medtune-synthetic",
        "3",
        "abc123",
        "custom",
        "none",
        "",
        64,
        3,
        12345,
        {"filters": 16, "optimizer": "adam"},
        "search run s1, best trial 7",
        ensemble=3,
        flip=True,
        temperature=1.7,
        conformal_level=0.9,
        medtune_version="9.8.7",
        git_commit="0123abcd4567",
    )
    data = mc.DataInfo(
        "synthetic",
        "split run r1",
        "0123456789abcdef",
        CLASSES,
        {"train": dict.fromkeys(CLASSES, 84), "val": dict.fromkeys(CLASSES, 18), "test": dict.fromkeys(CLASSES, 30)},
        {"byte_identical_copies_removed": 2, "label_conflicts_left_out": 1},
        {"truncated image": 1},
    )
    g = mc.GateInfo("champion", scores["test_macro_f1"], "2", 0.5, 0.0, "beats v2") if gate else None
    card = mc.build_card(
        model=model,
        data=data,
        metrics=scores,
        y_true=y,
        proba=p,
        confusion=metrics.confusion(y, p.argmax(1), 4),
        test_split="synthetic:feed",
        gate=g,
        examples={"right": 4, "wrong": 2},
        n_resamples=n_resamples,
        sets=sets,
    )
    return card, scores, y, p


def test_bootstrap_statistic_matches_the_logged_metric_definitions():
    y, p = predictions()
    point = bootstrap.headline_scores(y, p, 4)
    logged = metrics.classification_metrics(y, p, CLASSES)
    for key in bootstrap.HEADLINE:
        assert point[key] == pytest.approx(logged[f"test_{key}"], abs=1e-12), key
    curves = metrics.roc_curves(y, p, 4)
    for i, c in enumerate(CLASSES):
        assert point[f"f1_{i}"] == pytest.approx(logged[f"test_f1_{metrics.safe_key(c)}"])
        assert point[f"auc_{i}"] == pytest.approx(curves[i][2])


def test_wilson_intervals_never_collapse_at_zero_or_one():
    assert bootstrap.wilson(30, 30) == pytest.approx((0.8865, 1.0), abs=1e-4)  # 30 of 30 right
    low, high = bootstrap.wilson(0, 12)
    assert low == 0.0 and 0.2 < high < 0.3
    assert bootstrap.proportion(7, 10).value == 0.7 and np.isnan(bootstrap.proportion(0, 0).low)


def test_a_class_with_every_image_right_gets_intervals_below_one():
    """Class 0 all right and never predicted for another class: every one of its figures is 1."""
    y, p = predictions()
    p[y == 0] = [0.97, 0.01, 0.01, 0.01]
    p[(y != 0) & (p.argmax(1) == 0), 0] = 0.0
    scores = metrics.classification_metrics(y, p, CLASSES)
    card, *_ = make_card()
    card = mc.build_card(
        model=card.model,
        data=card.data,
        metrics=scores,
        y_true=y,
        proba=p,
        confusion=metrics.confusion(y, p.argmax(1), 4),
        test_split="s",
        n_resamples=200,
    )
    first = card.results.per_class[0]
    for name in ("sensitivity", "ppv", "f1", "auc"):
        est = getattr(first, name)
        assert est.value == 1.0 and 0.85 < est.low < est.high == 1.0, (name, est)


def test_bootstrap_intervals_contain_the_estimate_and_repeat_for_a_seed():
    y, p = predictions()
    a = bootstrap.bootstrap_intervals(y, p, CLASSES, n_resamples=300, seed=1)
    b = bootstrap.bootstrap_intervals(y, p, CLASSES, n_resamples=300, seed=1)
    assert a == b
    for key, iv in a.items():
        assert iv.low < iv.high and iv.contains(iv.value), (key, iv)  # never of zero width
    wide = bootstrap.bootstrap_intervals(y[::4], p[::4], CLASSES, n_resamples=300, seed=1)["accuracy"]
    assert wide.high - wide.low > a["accuracy"].high - a["accuracy"].low  # fewer images, wider interval


def test_card_figures_are_the_logged_metrics_with_intervals_around_them():
    card, scores, y, _ = make_card()
    r = card.results
    for key, est in r.headline.items():
        assert est.value == scores[f"test_{key}"] and est.low <= est.value <= est.high, key
    for c in r.per_class:
        key = metrics.safe_key(c.name)
        assert (
            c.sensitivity.value == scores[f"test_recall_{key}"]
            and c.specificity.value == scores[f"test_specificity_{key}"]
        )
        assert c.ppv.value == scores[f"test_precision_{key}"] and c.f1.value == scores[f"test_f1_{key}"]
        for est in (c.sensitivity, c.specificity, c.ppv, c.npv, c.f1, c.auc):
            assert est.low < est.value < est.high, (c.name, est)
        assert c.support == (y == CLASSES.index(c.name)).sum()
    assert r.ece == scores["test_ece"] and np.trace(r.confusion) / r.n_test == pytest.approx(scores["test_accuracy"])
    assert mc.ModelCard.from_dict(card.to_dict()) == card


def test_markdown_has_every_section_and_escapes_table_cells():
    card, scores, _, _ = make_card()
    md = mc.render_markdown(card, {k: f"figures/{k}.png" for k in mc.FIGURES})
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert headings == list(mc.SECTIONS)
    assert md.splitlines()[2].startswith("> **Research use only, not for diagnosis.")
    assert f"{scores['test_macro_f1']:.3f} [" in md and "ring \\| tumour" in md
    assert "![Grad-CAM of misclassified test images.](figures/gradcam_wrong.png)" in md
    assert "beats v2" in md and "12,345" in md and "search run s1, best trial 7" in md
    assert "truncated image: 1" in md and "byte identical copies removed: 2" in md
    no_gate = mc.render_markdown(make_card(gate=False)[0])
    assert "not registered" in no_gate and "![" not in no_gate  # no figure paths given: none linked


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.headings, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href")]
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_html_is_self_contained_with_inline_png_figures():
    from medtune.metrics import reliability_bins, roc_curves

    card, _, y, p = make_card()
    rng = np.random.default_rng(0)
    items = [
        GalleryItem(
            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            rng.random((32, 32)),
            f"true a\npred b ({i})",
            correct=i % 3 != 0,
        )
        for i in range(6)
    ]
    examples = mc.gradcam_examples({"a": items[:3], "b": items[3:]}, per_kind=4)
    assert [len(examples["right"]), len(examples["wrong"])] == [4, 2]
    figures = mc.card_figures(
        metrics.confusion(y, p.argmax(1), 4),
        roc_curves(y, p, 4),
        reliability_bins(y, p),
        CLASSES,
        examples,
        reliability_bins(y, p**2),
    )
    assert sorted(figures) == sorted(mc.FIGURES)
    page = mc.render_html(card, figures)
    parser = _Links()
    parser.feed(page)
    assert parser.headings == list(mc.SECTIONS)
    assert len(parser.urls) == len(mc.FIGURES) and all(u.startswith("data:image/png;base64,") for u in parser.urls)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page).lower()
    assert "http" not in text and "//" not in text and "@import" not in text and "url(" not in text
    for url in parser.urls:
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).format == "PNG"
    assert "<td>ring | tumour</td>" in page


def test_short_description_names_version_scores_gate_and_warning():
    card, scores, _, _ = make_card()
    text = mc.short_description(card)
    assert text.startswith("medtune-synthetic v3: custom at 64 px, 12,345 parameters")
    assert f"macro-F1 {scores['test_macro_f1']:.3f} [" in text and "@champion (beats v2)" in text
    assert "not for diagnosis" in text and "run abc123" in text


def test_limitations_version_commit_ensemble_flip_temperature_and_sets_are_in_the_card():
    y, p = predictions()
    sets = [[CLASSES[j] for j in np.argsort(-row)[: 1 + (row.max() < 0.6)]] for row in p]
    card, *_ = make_card(sets=sets)
    md = mc.render_markdown(card)
    limitations = md.split("## Limitations")[1].split("## ")[0]
    for words in ("single site", "No external validation", "Subgroups unknown", "64 x 64 px", "Out of distribution"):
        assert words in limitations, words
    assert "9.8.7, commit 0123abcd4567" in md and "3 members, probabilities averaged" in md
    assert "on: each image and its mirror averaged" in md and "1.700, fitted on validation images" in md
    r = card.results
    assert r.ece_uncalibrated == pytest.approx(metrics.expected_calibration_error(y, calibration.scale(p, 1 / 1.7)))
    assert r.set_coverage == pytest.approx(np.mean([CLASSES[t] in s for t, s in zip(y, sets)]))
    first = r.per_class[0]
    assert first.set_size == pytest.approx(np.mean([len(s) for s, t in zip(sets, y) if t == 0]))
    assert f"{r.set_coverage:.1%}" in md and "no longer an untouched test" in md
    assert mc.ModelCard.from_dict(card.to_dict()) == card


def test_a_cross_validated_model_says_its_members_are_folds_and_what_it_was_calibrated_on():
    import dataclasses

    y, p = predictions()
    card, *_ = make_card(sets=[[CLASSES[j] for j in np.argsort(-row)[:2]] for row in p])
    pooled = "the out-of-fold predictions of 520 pooled training and validation images"
    card = dataclasses.replace(card, model=dataclasses.replace(card.model, ensemble=5, folds=5, calibrated_on=pooled))
    md = mc.render_markdown(card)
    assert "5 members, one per fold of 5-fold cross-validation, probabilities averaged" in md
    assert f"1.700, fitted on {pooled}" in md and f"split-conformal on {pooled}" in md
    assert "validation images" not in md.split("## Limitations")[0].split("Training parameters")[0]
    assert mc.ModelCard.from_dict(card.to_dict()) == card


def test_the_gate_section_shows_the_paired_interval():
    card, *_ = make_card()
    card.gate = mc.GateInfo("challenger", 0.81, "2", 0.8, 0.0, "not better beyond noise", 0.005, -0.01, 0.02)
    md = mc.render_markdown(card)
    assert "macro-F1 difference +0.0050, 90 % paired-bootstrap interval [-0.0100, +0.0200]" in md


class _Run:
    """Stands in for tracking.RunLogger: keeps the card folder it is given."""

    def directory(self, root, name):
        self.files = {f.name: f.read_bytes() for f in Path(root).rglob("*") if f.is_file()}


def _evaluation(n_gallery=6):
    from medtune.evaluation import Evaluation

    y, p = predictions()
    rng = np.random.default_rng(0)
    items = [
        GalleryItem(
            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.random((32, 32)), "t", i % 3 != 0, "a", "b", 0.7
        )
        for i in range(n_gallery)
    ]
    return Evaluation(
        metrics.classification_metrics(y, p, CLASSES),
        p,
        y,
        None,
        {},
        "",
        metrics.confusion(y, p.argmax(1), 4),
        metrics.roc_curves(y, p, 4),
        metrics.reliability_bins(y, p),
        {"a": items},
    )


@pytest.mark.parametrize("images", [False, True])
def test_test_images_are_in_the_html_only_when_asked(images):
    from medtune.tracking.cards import log_model_card

    card, *_ = make_card()
    run = _Run()
    logged = log_model_card(
        run, _evaluation(), model=card.model, data=card.data, test_split="s", gate=None, images=images
    )
    page = run.files["model_card.html"].decode()
    gradcam = [f for f in run.files if f.startswith("gradcam")]
    if images:
        assert sorted(gradcam) == ["gradcam_right.png", "gradcam_wrong.png"] and page.count("<img") == 6
        assert not logged.described
    else:
        assert not gradcam and page.count("<img") == 4  # confusion, ROC, reliability before and after: no test image
        assert len(logged.described) == 6 and "heat peak" in page and "card_images" in page
        e = logged.described[0]
        assert (e.true, e.pred, e.confidence) == ("a", "b", 0.7) and 0 <= e.hot_area <= 1


def test_a_binary_models_card_reads_its_operating_points_on_the_test_images():
    import dataclasses

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], [90, 30])
    score = np.clip(rng.normal(np.where(y == 1, 0.7, 0.3), 0.15), 0, 1)
    p = np.stack([1 - score, score], axis=1)
    classes = ["no_tumour", "tumour"]
    card, *_ = make_card()
    model = dataclasses.replace(card.model, operating_thresholds=[0.4, 0.55], temperature=1.0)
    data = dataclasses.replace(card.data, classes=classes, counts={"test": {"no_tumour": 90, "tumour": 30}})
    binary = mc.build_card(
        model=model,
        data=data,
        metrics=metrics.classification_metrics(y, p, classes),
        y_true=y,
        proba=p,
        confusion=metrics.confusion(y, p.argmax(1), 2),
        test_split="synthetic:feed",
        n_resamples=50,
    )
    tumour = binary.results.per_class[1]
    called = score >= 0.55
    assert tumour.operating_threshold == 0.55
    assert tumour.operating_sensitivity.value == pytest.approx(called[y == 1].mean())
    assert tumour.operating_specificity.value == pytest.approx((~called[y == 0]).mean())
    assert tumour.operating_sensitivity.low < tumour.operating_sensitivity.value < tumour.operating_sensitivity.high
    md = mc.render_markdown(binary)
    assert "### Operating point" in md and "chosen on validation images for 90 % specificity" in md
    assert f"| tumour | 0.550 | {tumour.operating_sensitivity.value:.3f}" in md
    assert mc.ModelCard.from_dict(binary.to_dict()) == binary
    assert "Operating point" not in mc.render_markdown(card)  # four classes: none
