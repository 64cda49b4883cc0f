"""A model card laid out as a list of plain blocks, which the Markdown and HTML renderers share."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass

from medtune.model_card._content import HEADLINE_NAMES, Estimate, ModelCard

SECTIONS = (
    "Intended use",
    "Out-of-scope uses",
    "Limitations",
    "Data",
    "Model",
    "Test results",
    "Champion gate",
    "Grad-CAM examples",
)
FIGURES = {
    "confusion_matrix": "Confusion matrix on the test images (counts).",
    "roc_curves": "ROC curves, one class against the rest.",
    "reliability_before": "Reliability diagram before temperature scaling.",
    "reliability": "Reliability diagram of the served (calibrated) probabilities: accuracy against confidence.",
    "gradcam_right": "Grad-CAM of correctly classified test images.",
    "gradcam_wrong": "Grad-CAM of misclassified test images.",
}


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str
    warning: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    key: str
    caption: str


def _ci(e: Estimate) -> str:
    return "n/a (no image to count)" if math.isnan(e.low) else f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def _words(key: str) -> str:
    return key.replace("_", " ")


def layout(card: ModelCard, figures: Collection[str] = ()) -> list:
    """The card's blocks, in order; a figure block only for keys in ``figures``."""
    m, d, r = card.model, card.data, card.results

    def figure(key: str) -> list:
        return [Figure(key, FIGURES[key])] if key in figures else []

    blocks: list = [
        Heading(1, f"Model card: {card.title}"),
        Text(card.intended_use, warning=True),
        Text(
            f"Written {card.created} by medtune, after Mitchell et al. (2019), Model Cards for Model "
            "Reporting, and MONAI bundle metadata."
        ),
    ]

    blocks += [Heading(2, "Intended use"), Text(card.intended_use)]
    blocks += [Heading(2, "Out-of-scope uses"), Bullets(card.out_of_scope)]
    blocks += [Heading(2, "Limitations"), Bullets(card.limitations)]

    splits = list(d.counts)
    blocks += [
        Heading(2, "Data"),
        Text(f"Dataset {d.dataset}; test images from {d.test_source}; manifest hash {d.manifest_hash or 'n/a'}."),
        Table(
            ["class", *splits],
            [[c, *(str(d.counts[s].get(c, 0)) for s in splits)] for c in d.classes]
            + [["total", *(str(sum(d.counts[s].values())) for s in splits)]],
        ),
    ]
    if d.curation:
        blocks += [
            Text("Validation and de-duplication before the split (files):"),
            Bullets([f"{_words(k)}: {v}" for k, v in d.curation.items()]),
        ]
    if d.skipped_reasons:
        blocks += [Text("Unusable files by reason:"), Bullets([f"{k}: {v}" for k, v in d.skipped_reasons.items()])]

    registered = f"{m.name} version {m.version}" if m.name else "not registered"
    blocks += [
        Heading(2, "Model"),
        Table(
            ["property", "value"],
            [
                [
                    "architecture",
                    "custom CNN" if m.backbone == "custom" else f"{m.backbone} backbone under medtune's head",
                ],
                ["initial weights", m.weights_source or "none (random)"],
                ["weights sha256", m.weights_sha256 or "n/a"],
                ["input", f"{m.image_size} x {m.image_size} px, {m.channels} channel(s), raw 0-255 pixels"],
                ["parameters", f"{m.parameters:,}"],
                ["ensemble", _ensemble(m)],
                ["test-time flip", "on: each image and its mirror averaged" if m.flip else "off"],
                ["temperature", f"{m.temperature:.3f}, fitted on {m.calibrated_on}" if m.temperature != 1 else "none"],
                ["medtune", f"{m.medtune_version}, commit {m.git_commit}"],
                ["training params from", m.params_source],
                ["registered as", registered],
                ["training run", m.run_id],
            ],
        ),
        Text("Training parameters:"),
        Table(
            ["parameter", "value"], [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in m.params.items()]
        ),
    ]

    blocks += [
        Heading(2, "Test results"),
        Text(
            f"{r.n_test} test images ({r.test_split}). 95 % intervals: Wilson score intervals for proportions "
            "(accuracy; per class sensitivity, specificity, PPV and NPV, at the test prevalence); a stratified "
            f"bootstrap ({r.n_resamples} resamples of the test images within each class, seed {r.seed}) for the "
            "rest. A bootstrap of zero width (every image right) is widened to the Wilson interval of its value."
        ),
        Table(
            ["metric", "value [95 % CI]"],
            [[HEADLINE_NAMES[k], _ci(e)] for k, e in r.headline.items()]
            + [["expected calibration error (15 bins)", f"{r.ece:.3f}"], ["log loss", f"{r.log_loss:.3f}"]],
        ),
        Heading(3, "Per class"),
        Table(
            ["class", "images", "sensitivity", "specificity", "PPV", "NPV", "F1", "ROC-AUC"],
            [
                [c.name, str(c.support), *map(_ci, (c.sensitivity, c.specificity, c.ppv, c.npv, c.f1))]
                + ["n/a" if c.auc is None else _ci(c.auc)]
                for c in r.per_class
            ],
        ),
        *_operating_points(r.per_class, m.calibrated_on),
        Heading(3, "Confusion matrix"),
        Text("Rows: true class; columns: predicted class."),
        Table(["true \\ predicted", *d.classes], [[c, *map(str, row)] for c, row in zip(d.classes, r.confusion)]),
        *figure("confusion_matrix"),
        Heading(3, "ROC"),
        *figure("roc_curves"),
        Heading(3, "Calibration"),
        Text(
            f"Expected calibration error {r.ece:.3f}: the mean gap between confidence and accuracy"
            + (
                f"; {r.ece_uncalibrated:.3f} before the temperature {m.temperature:.3f} (one number for the whole "
                f"model, fitted on {m.calibrated_on} by negative log-likelihood; it changes no predicted class)."
                if r.ece_uncalibrated is not None
                else "; the probabilities are not temperature-scaled."
            )
        ),
        *figure("reliability_before"),
        *figure("reliability"),
        Heading(3, "Prediction sets"),
    ]
    if r.set_coverage is None:
        blocks.append(Text("The model has no conformal threshold: it gives no prediction sets."))
    else:
        blocks += [
            Text(
                f"Each answer comes with the set of classes that holds the true class with probability at least "
                f"{m.conformal_level:.0%} (split-conformal on {m.calibrated_on}, for images like them). On the "
                f"test images it held the true class for {r.set_coverage:.1%}, with {r.set_size:.2f} classes on average."
            ),
            Table(
                ["true class", "coverage", "mean set size"],
                [[c.name, f"{c.set_coverage:.3f}", f"{c.set_size:.2f}"] for c in r.per_class if c.set_size is not None],
            ),
        ]

    blocks.append(Heading(2, "Champion gate"))
    g = card.gate
    if g is None:
        blocks.append(Text("No gate decision: the model was not registered."))
    else:
        before = "none" if g.champion_version is None else f"v{g.champion_version}"
        score = "n/a" if g.champion_score is None else f"{g.champion_score:.4f}"
        blocks += [
            Text(f"Decision: @{g.alias} ({g.reason})."),
            Table(
                ["", "model", "test macro-F1"],
                [["this version", f"v{m.version}", f"{g.score:.4f}"], ["champion before", before, score]],
            ),
            Text(f"Margin required: {'not recorded' if g.margin is None else g.margin}."),
        ]
        if g.difference is not None:
            blocks.append(
                Text(
                    f"Paired comparison on the same test images: macro-F1 difference {g.difference:+.4f}, 90 % "
                    f"paired-bootstrap interval [{g.low:+.4f}, {g.high:+.4f}]; promotion needs the whole "
                    "interval above the margin."
                )
            )
    blocks.append(
        Text(
            "Test images that decide promotion are no longer an untouched test: the champion is the version "
            "they favoured, so its test figures are a little optimistic."
        )
    )

    blocks.append(Heading(2, "Grad-CAM examples"))
    right, wrong = card.examples.get("right", 0), card.examples.get("wrong", 0)
    blocks.append(
        Text(
            f"{right} correctly and {wrong} wrongly classified test images explained by the Grad-CAM heatmap "
            "of the predicted class." + ("" if wrong else " No test image was misclassified.")
        )
    )
    blocks += figure("gradcam_right") + figure("gradcam_wrong")
    if card.described:
        blocks += [
            Text(
                "The images (patient data) are left out of this card; the heatmaps are described by figures "
                "(ask for card_images to show them)."
            ),
            Table(
                ["true class", "predicted", "confidence", "heat peak (x %, y %)", "area at half the peak or more"],
                [
                    [e.true, e.pred, f"{e.confidence:.2f}", f"{e.peak[0]}, {e.peak[1]}", f"{e.hot_area:.0%}"]
                    for e in card.described
                ],
            ),
        ]
    return blocks


def _ensemble(m) -> str:
    if m.ensemble <= 1:
        return "one network"
    how = f", one per fold of {m.folds}-fold cross-validation" if m.folds > 1 else ""
    return f"{m.ensemble} members{how}, probabilities averaged"


def _operating_points(per_class, calibrated_on: str) -> list:
    """A binary model's fixed operating points, read on the test images (nothing for other models)."""
    rows = [c for c in per_class if c.operating_threshold is not None]
    if not rows:
        return []
    return [
        Heading(3, "Operating point"),
        Text(
            f"Each class is called when its probability reaches a threshold chosen on {calibrated_on} for "
            "90 % specificity, before the test images were seen; on the test images it gives:"
        ),
        Table(
            ["class called", "from probability", "sensitivity", "specificity"],
            [
                [c.name, f"{c.operating_threshold:.3f}", _ci(c.operating_sensitivity), _ci(c.operating_specificity)]
                for c in rows
            ],
        ),
    ]
