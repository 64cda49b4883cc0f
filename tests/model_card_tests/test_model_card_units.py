"""The model card from plain values: bootstrap intervals, content, Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from medtune import bootstrap, metrics
from medtune import model_card as mc
from medtune.evaluation import GalleryItem

CLASSES = ["crescent", "disc", "ring | tumour", "speckled"]  # a pipe: Markdown tables must escape it


def predictions(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n // 4)
    p = rng.dirichlet(np.ones(4), len(y))
    p[np.arange(len(y)), y] += rng.uniform(0, 1.2, len(y))
    return y, np.round(p / p.sum(1, keepdims=True), 3)


def make_card(gate=True, n_resamples=300):
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
    )
    return card, scores, y, p


def test_bootstrap_statistic_matches_the_logged_metric_definitions():
    y, p = predictions()
    point = bootstrap.headline_scores(y, p, 4)
    logged = metrics.classification_metrics(y, p, CLASSES)
    for key in bootstrap.HEADLINE:
        assert point[key] == pytest.approx(logged[f"test_{key}"], abs=1e-12), key
    for i, c in enumerate(CLASSES):
        key = metrics.safe_key(c)
        assert point[f"sensitivity_{i}"] == pytest.approx(logged[f"test_recall_{key}"])
        assert point[f"specificity_{i}"] == pytest.approx(logged[f"test_specificity_{key}"])


def test_bootstrap_intervals_contain_the_estimate_and_repeat_for_a_seed():
    y, p = predictions()
    a = bootstrap.bootstrap_intervals(y, p, CLASSES, n_resamples=300, seed=1)
    b = bootstrap.bootstrap_intervals(y, p, CLASSES, n_resamples=300, seed=1)
    assert a == b
    for key, iv in a.items():
        assert iv.low < iv.high and iv.contains(iv.value), (key, iv)
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
        assert c.sensitivity.low <= c.sensitivity.value <= c.sensitivity.high
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
        metrics.confusion(y, p.argmax(1), 4), roc_curves(y, p, 4), reliability_bins(y, p), CLASSES, examples
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
