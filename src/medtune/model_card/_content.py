"""What a model card says, computed from plain values (no files, no tracking, no rendering)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from medtune.bootstrap import HEADLINE, bootstrap_intervals, proportion
from medtune.calibration import scale
from medtune.metrics import expected_calibration_error, safe_key

INTENDED_USE = (
    "Research use only, not for diagnosis. This model is not a medical device: it is meant for "
    "research on image classification and for demonstrating the medtune pipeline. Its outputs must "
    "not inform diagnosis, triage or treatment of any patient."
)
OUT_OF_SCOPE = [
    "Diagnosis, screening, triage or treatment decisions, or any use as a reader of patient images.",
    "Images of another modality, body part, scanner, protocol or population than the training data, "
    "without validation on local data.",
    "Images of a condition outside its classes: the model always answers one of the classes it knows "
    "and has no 'other' or 'unknown' answer.",
    "Reading a Grad-CAM heatmap as proof of what the model relies on: it shows where the class score "
    "is sensitive, at the resolution of the last feature map.",
]
HEADLINE_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
    "roc_auc_macro": "ROC-AUC (macro, one vs rest)",
}


@dataclass
class ModelInfo:
    name: str  # registered model name, "" when not registered
    version: str
    run_id: str
    backbone: str
    weights_source: str
    weights_sha256: str
    image_size: int
    channels: int
    parameters: int
    params: dict
    params_source: str  # where the training params came from, in words
    ensemble: int = 1  # members averaged
    folds: int = 0  # k-fold members (0: seeds on one validation split)
    calibrated_on: str = "validation images"  # what the temperature and the sets' threshold were fitted on
    operating_thresholds: list[float] | None = None  # two classes: each one's operating point on p(class)
    flip: bool = False  # test-time left-right flip
    temperature: float = 1.0  # 1: not calibrated
    conformal_level: float | None = None  # None: no prediction sets
    medtune_version: str = "unknown"
    git_commit: str = "unknown"


@dataclass
class DataInfo:
    dataset: str
    test_source: str  # "split run <id>" or "folder <path>"
    manifest_hash: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    curation: dict[str, int]  # what was skipped, de-duplicated or dropped, and how many
    skipped_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class Estimate:
    value: float
    low: float
    high: float


@dataclass
class ClassResult:
    name: str
    support: int
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate  # at the test prevalence
    npv: Estimate
    f1: Estimate
    auc: Estimate | None
    set_coverage: float | None = None  # of its images, how many had the true class in their prediction set
    set_size: float | None = None  # their mean set size
    # a binary model's operating point (chosen before the test, medtune.metrics.operating_thresholds)
    operating_threshold: float | None = None  # the class is called from p(class) >= it
    operating_sensitivity: Estimate | None = None
    operating_specificity: Estimate | None = None


@dataclass
class Results:
    n_test: int
    test_split: str
    headline: dict[str, Estimate]  # keys of HEADLINE
    per_class: list[ClassResult]
    confusion: list[list[int]]  # rows true class, columns predicted
    ece: float
    log_loss: float
    n_resamples: int
    seed: int
    ece_uncalibrated: float | None = None  # before the temperature; None without one
    set_coverage: float | None = None  # None: the model has no prediction sets
    set_size: float | None = None


@dataclass
class GateInfo:
    alias: str
    score: float
    champion_version: str | None
    champion_score: float | None
    margin: float | None  # None: not recorded
    reason: str
    difference: float | None = None  # the paired comparison (see medtune.promotion); None: none was made
    low: float | None = None
    high: float | None = None


@dataclass
class ExampleInfo:
    """A Grad-CAM example described by figures instead of the patient's pixels."""

    true: str
    pred: str
    confidence: float
    peak: tuple[int, int]  # where the heat peaks, in % of the width and height from the top left
    hot_area: float  # share of the image at half the peak heat or more


@dataclass
class ModelCard:
    title: str
    created: str
    intended_use: str
    out_of_scope: list[str]
    model: ModelInfo
    data: DataInfo
    results: Results
    gate: GateInfo | None
    examples: dict[str, int]  # Grad-CAM examples: {"right": n, "wrong": n}
    limitations: list[str] = field(default_factory=list)
    described: list[ExampleInfo] = field(default_factory=list)  # the examples, when their images are left out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelCard:
        res = dict(d["results"])
        res["headline"] = {k: Estimate(**v) for k, v in res["headline"].items()}
        estimates = (
            "sensitivity",
            "specificity",
            "ppv",
            "npv",
            "f1",
            "auc",
            "operating_sensitivity",
            "operating_specificity",
        )
        res["per_class"] = [
            ClassResult(**{**c, **{k: Estimate(**c[k]) if c.get(k) else None for k in estimates}})
            for c in res["per_class"]
        ]
        return cls(
            **{
                **d,
                "model": ModelInfo(**d["model"]),
                "data": DataInfo(**d["data"]),
                "results": Results(**res),
                "gate": GateInfo(**d["gate"]) if d.get("gate") else None,
                "described": [ExampleInfo(**{**e, "peak": tuple(e["peak"])}) for e in d.get("described", [])],
            }
        )


def data_from_split_report(dataset: str, report: Mapping, manifest_hash: str, test_source: str) -> DataInfo:
    """The data section from a split's ``report.json``."""
    groups = report.get("duplicate_groups", {})
    curation = {
        "files_seen": int(report.get("accounted", {}).get("files_seen", 0)),
        "skipped_unusable": len(report.get("skipped", [])),
        "ignored_hidden_or_outside": int(sum(report.get("ignored", {}).values())),
        "byte_identical_copies_removed": len(report.get("removed_duplicates", [])),
        "label_conflicts_left_out": len(report.get("label_conflicts", [])),
        "test_duplicates_of_train_dropped": int(report.get("test_dropped_duplicates_of_train", 0)),
        "duplicate_groups_kept_in_one_split": int(groups.get("count", 0))
        if isinstance(groups, Mapping)
        else len(groups),
        "look_alike_groups_across_classes": len(report.get("near_duplicate_label_mismatch", [])),
        "phash_distance": int(report.get("phash_distance", 0)),
    }
    reasons = Counter(s.get("reason", "?") for s in report.get("skipped", []))
    counts = {s: {c: int(n) for c, n in per.items()} for s, per in report.get("counts", {}).items()}
    return DataInfo(
        dataset,
        test_source,
        manifest_hash,
        list(report.get("classes", [])),
        counts,
        curation,
        dict(sorted(reasons.items())),
    )


def data_from_test_labels(
    dataset: str, classes: Sequence[str], y_test: np.ndarray, test_source: str, test_hash: str
) -> DataInfo:
    """The data section of an evaluation on a folder: only the test images are known."""
    counts = {"test": {c: int((np.asarray(y_test) == i).sum()) for i, c in enumerate(classes)}}
    return DataInfo(dataset, test_source, test_hash, list(classes), counts, {})


def _operating_point(thresholds, i: int, y: np.ndarray, proba: np.ndarray) -> dict:
    """Class ``i``'s operating point on the test images, with Wilson intervals (nothing without one)."""
    if not thresholds:
        return {}
    called, positive = np.asarray(proba)[:, i] >= thresholds[i], y == i
    return {
        "operating_threshold": float(thresholds[i]),
        "operating_sensitivity": _estimate(proportion(int(called[positive].sum()), int(positive.sum()))),
        "operating_specificity": _estimate(proportion(int((~called[~positive]).sum()), int((~positive).sum()))),
    }


def build_card(
    *,
    model: ModelInfo,
    data: DataInfo,
    metrics: Mapping[str, float],
    y_true: np.ndarray,
    proba: np.ndarray,
    confusion: np.ndarray,
    test_split: str,
    gate: GateInfo | None = None,
    examples: Mapping[str, int] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    sets: Sequence[Sequence[str]] | None = None,
    described: Sequence[ExampleInfo] = (),
) -> ModelCard:
    """A model card from an evaluation's logged ``test_`` metrics, its predictions and prediction ``sets``.

    Point estimates are the logged metrics themselves; the intervals come from :mod:`medtune.bootstrap`
    (Wilson for proportions, bootstrap otherwise).
    """
    classes = data.classes
    y = np.asarray(y_true)
    ci = bootstrap_intervals(y, proba, classes, n_resamples=n_resamples, seed=seed)
    cm = np.asarray(confusion, dtype=np.int64)
    headline = {k: Estimate(float(metrics[f"test_{k}"]), ci[k].low, ci[k].high) for k in HEADLINE}
    headline["accuracy"] = _estimate(proportion(np.trace(cm), cm.sum()), metrics["test_accuracy"])
    per_class = []
    for i, name in enumerate(classes):
        key = safe_key(name)
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        tn = cm.sum() - support - predicted + tp
        covered = [name in s for s, t in zip(sets or [], y) if t == i]
        per_class.append(
            ClassResult(
                name=name,
                support=int(support),
                sensitivity=_estimate(proportion(tp, support), metrics[f"test_recall_{key}"]),
                specificity=_estimate(proportion(tn, tn + predicted - tp), metrics[f"test_specificity_{key}"]),
                ppv=_estimate(proportion(tp, predicted), metrics[f"test_precision_{key}"]),
                npv=_estimate(proportion(tn, tn + support - tp)),
                f1=_estimate(ci[f"f1_{i}"], metrics[f"test_f1_{key}"]),
                auc=_estimate(ci[f"auc_{i}"]) if np.isfinite(ci[f"auc_{i}"].value) else None,
                set_coverage=float(np.mean(covered)) if covered else None,
                set_size=float(np.mean([len(s) for s, t in zip(sets, y) if t == i])) if covered else None,
                **_operating_point(model.operating_thresholds, i, y, proba),
            )
        )
    results = Results(
        int(cm.sum()),
        test_split,
        headline,
        per_class,
        cm.tolist(),
        float(metrics["test_ece"]),
        float(metrics["test_log_loss"]),
        n_resamples,
        seed,
        expected_calibration_error(y, scale(proba, 1 / model.temperature)) if model.temperature != 1.0 else None,
        float(np.mean([classes[t] in s for s, t in zip(sets, y)])) if sets else None,
        float(np.mean([len(s) for s in sets])) if sets else None,
    )
    title = f"{model.name} v{model.version}" if model.name else f"medtune model of run {model.run_id}"
    return ModelCard(
        title,
        datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        INTENDED_USE,
        list(OUT_OF_SCOPE),
        model,
        data,
        results,
        gate,
        dict(examples or {}),
        limitations(model, data),
        list(described),
    )


def _estimate(interval, value: float | None = None) -> Estimate:
    """An interval as the card stores it; ``value`` (the logged metric) replaces its point when given."""
    return Estimate(float(interval.value if value is None else value), float(interval.low), float(interval.high))


def limitations(model: ModelInfo, data: DataInfo) -> list[str]:
    """What the test figures do not show, in words."""
    return [
        f"Data: one collection ({data.dataset}), taken to come from a single site unless its source says "
        "otherwise; the test images are a held-out part of the same collection.",
        "No external validation: nothing here measures the model on another hospital, scanner, protocol or "
        "time period, where its figures may be markedly worse.",
        "Subgroups unknown: age, sex, ethnicity, scanner and site are not recorded, so performance within "
        "any subgroup was not measured.",
        f"Trained on {', '.join(data.classes)} images resized to {model.image_size} x {model.image_size} px "
        f"with {model.channels} channel(s); other modalities, body parts or image sizes are out of distribution.",
        "Out of distribution the model still answers one of its classes, often with high confidence; the "
        "prediction sets' coverage holds only for images like the validation and test images.",
        "The intervals reflect the sampling of the test images only; the test images that decide promotion "
        "are no longer an untouched test.",
    ]


def describe_examples(items: Sequence) -> list[ExampleInfo]:
    """Grad-CAM gallery items (:class:`medtune.evaluation.GalleryItem`) described by figures."""
    out = []
    for it in items:
        heat = np.asarray(it.heatmap, dtype=np.float64)
        row, col = np.unravel_index(int(heat.argmax()), heat.shape)
        out.append(
            ExampleInfo(
                it.true,
                it.pred,
                it.confidence,
                (round(100 * col / max(1, heat.shape[1] - 1)), round(100 * row / max(1, heat.shape[0] - 1))),
                float((heat >= heat.max() / 2).mean()) if heat.max() > 0 else 0.0,
            )
        )
    return out


def short_description(card: ModelCard) -> str:
    """A few lines for the registered version's description (the Model Registry shows it)."""
    h, m = card.results.headline, card.model
    f1, acc, auc = h["macro_f1"], h["accuracy"], h["roc_auc_macro"]
    lines = [
        f"{card.title}: {m.backbone} at {m.image_size} px, {m.parameters:,} parameters, trained on "
        f"{card.data.dataset} (manifest {card.data.manifest_hash}).",
        f"Test ({card.results.n_test} images): macro-F1 {_ci(f1)}, accuracy {_ci(acc)}, ROC-AUC {_ci(auc)}; "
        f"ECE {card.results.ece:.3f} (95 % intervals).",
    ]
    if card.results.set_coverage is not None:
        lines.append(
            f"Prediction sets at {card.model.conformal_level:.0%}: coverage {card.results.set_coverage:.3f} on test, "
            f"mean size {card.results.set_size:.2f}; temperature {m.temperature:.3f}."
        )
    if card.gate:
        lines.append(f"Champion gate: @{card.gate.alias} ({card.gate.reason}).")
    lines.append(f"Model card: model_card/model_card.html in run {m.run_id}. {card.intended_use.split('.')[0]}.")
    return "\n".join(lines)


def _ci(e: Estimate) -> str:
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"
