"""What a model card says, computed from plain values (no files, no tracking, no rendering)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from medtune.bootstrap import HEADLINE, bootstrap_intervals
from medtune.metrics import safe_key

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
    f1: float
    auc: float | None


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


@dataclass
class GateInfo:
    alias: str
    score: float
    champion_version: str | None
    champion_score: float | None
    margin: float | None  # None: not recorded
    reason: str


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
    examples: dict[str, int]  # Grad-CAM examples shown: {"right": n, "wrong": n}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelCard:
        res = dict(d["results"])
        res["headline"] = {k: Estimate(**v) for k, v in res["headline"].items()}
        res["per_class"] = [
            ClassResult(
                **{**c, "sensitivity": Estimate(**c["sensitivity"]), "specificity": Estimate(**c["specificity"])}
            )
            for c in res["per_class"]
        ]
        return cls(
            **{
                **d,
                "model": ModelInfo(**d["model"]),
                "data": DataInfo(**d["data"]),
                "results": Results(**res),
                "gate": GateInfo(**d["gate"]) if d.get("gate") else None,
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
) -> ModelCard:
    """A model card from an evaluation's logged ``test_`` metrics and its predictions.

    Point estimates are the logged metrics themselves; the intervals come from
    :func:`medtune.bootstrap.bootstrap_intervals` on ``(y_true, proba)``.
    """
    classes = data.classes
    ci = bootstrap_intervals(y_true, proba, classes, n_resamples=n_resamples, seed=seed)
    headline = {k: Estimate(float(metrics[f"test_{k}"]), ci[k].low, ci[k].high) for k in HEADLINE}
    cm = np.asarray(confusion, dtype=np.int64)
    auc = _auc_per_class(np.asarray(y_true), np.asarray(proba), len(classes))
    per_class = []
    for i, name in enumerate(classes):
        key = safe_key(name)
        per_class.append(
            ClassResult(
                name=name,
                support=int(cm[i].sum()),
                sensitivity=Estimate(
                    float(metrics[f"test_recall_{key}"]), ci[f"sensitivity_{i}"].low, ci[f"sensitivity_{i}"].high
                ),
                specificity=Estimate(
                    float(metrics[f"test_specificity_{key}"]), ci[f"specificity_{i}"].low, ci[f"specificity_{i}"].high
                ),
                f1=float(metrics[f"test_f1_{key}"]),
                auc=auc.get(i),
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
    )


def _auc_per_class(y: np.ndarray, proba: np.ndarray, k: int) -> dict[int, float]:
    from medtune.metrics import roc_curves

    return {c: float(auc) for c, (_, _, auc) in roc_curves(y, proba, k).items()}


def short_description(card: ModelCard) -> str:
    """A few lines for the registered version's description (the Model Registry shows it)."""
    h, m = card.results.headline, card.model
    f1, acc, auc = h["macro_f1"], h["accuracy"], h["roc_auc_macro"]
    lines = [
        f"{card.title}: {m.backbone} at {m.image_size} px, {m.parameters:,} parameters, trained on "
        f"{card.data.dataset} (manifest {card.data.manifest_hash}).",
        f"Test ({card.results.n_test} images): macro-F1 {_ci(f1)}, accuracy {_ci(acc)}, ROC-AUC {_ci(auc)}; "
        f"ECE {card.results.ece:.3f} (95 % bootstrap intervals).",
    ]
    if card.gate:
        lines.append(f"Champion gate: @{card.gate.alias} ({card.gate.reason}).")
    lines.append(f"Model card: model_card/model_card.html in run {m.run_id}. {card.intended_use.split('.')[0]}.")
    return "\n".join(lines)


def _ci(e: Estimate) -> str:
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"
