"""Evaluate a trained classifier on held-out images: metrics, tables and Grad-CAM galleries.

Compute only; :mod:`medtune.tracking.cards` renders and logs. Never imports mlflow. The test
images come from a finished split (:func:`manifest_test_set`) or any folder (:func:`folder_test_set`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medtune.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class GalleryItem:
    image: np.ndarray
    heatmap: np.ndarray
    title: str
    correct: bool
    true: str = ""
    pred: str = ""
    confidence: float = 0.0


@dataclass
class Evaluation:
    metrics: dict[str, float]
    proba: np.ndarray
    y_true: np.ndarray
    predictions: pd.DataFrame
    report: dict
    report_text: str
    confusion: np.ndarray
    roc: dict
    reliability: dict
    galleries: dict[str, list[GalleryItem]] = field(default_factory=dict)
    sets: list[list[str]] | None = None  # prediction sets, when the model has them


def evaluate_model(
    model,
    x: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    paths: list[str] | None = None,
    *,
    correct_per_class: int = 4,
    max_misclassified_per_class: int = 12,
    with_gradcam: bool = True,
    metadata: dict | None = None,
) -> Evaluation:
    """Score ``model`` on (x, y) and collect everything an evaluation report shows.

    With the model's ``metadata`` holding a conformal threshold, also its prediction sets, their coverage
    (``test_set_coverage``) and mean size (``test_mean_set_size``).
    """
    from medtune import metrics as m
    from medtune.training import predict_proba

    proba = predict_proba(model, x)
    pred = proba.argmax(1)
    n = len(classes)
    scores = m.classification_metrics(y, proba, classes, prefix="test_")
    if (metadata or {}).get("operating_thresholds"):  # a binary model's operating point, chosen on validation
        scores.update(m.operating_point_metrics(y, proba, metadata["operating_thresholds"], classes))
    report = m.classification_report_dict(y, pred, classes)
    report_text = m.classification_report_text(y, pred, classes)
    predictions = pd.DataFrame(
        {
            "path": paths if paths is not None else [f"#{i}" for i in range(len(y))],
            "true": [classes[i] for i in y],
            "pred": [classes[i] for i in pred],
            "confidence": proba.max(1).astype(float),
            "correct": pred == y,
        }
    )
    for j, cls in enumerate(classes):
        predictions[f"prob_{m.safe_key(cls)}"] = proba[:, j].astype(float)
    sets = None
    if metadata and metadata.get("conformal_threshold") is not None:
        from medtune.calibration import prediction_set

        sets = prediction_set(proba, list(classes), metadata)
        predictions["prediction_set"] = [" | ".join(s) for s in sets]
        scores["test_set_coverage"] = float(np.mean([classes[t] in s for t, s in zip(y, sets)]))
        scores["test_mean_set_size"] = float(np.mean([len(s) for s in sets]))
    result = Evaluation(
        metrics=scores,
        proba=proba,
        y_true=np.asarray(y),
        predictions=predictions,
        report=report,
        report_text=report_text,
        confusion=m.confusion(y, pred, n),
        roc=m.roc_curves(y, proba, n),
        reliability=m.reliability_bins(y, proba),
        sets=sets,
    )
    if with_gradcam:
        result.galleries = gradcam_galleries(
            model, x, y, proba, classes, correct_per_class, max_misclassified_per_class
        )
    return result


def gradcam_galleries(model, x, y, proba, classes, correct_per_class: int, max_misclassified_per_class: int):
    """Per true class: a few correct images and the misclassified ones (capped), with heatmaps."""
    from medtune.explain import gradcam

    pred = proba.argmax(1)
    galleries: dict[str, list[GalleryItem]] = {}
    for c, cls in enumerate(classes):
        idx_c = np.flatnonzero(y == c)
        correct = idx_c[pred[idx_c] == c]
        wrong = idx_c[pred[idx_c] != c]
        correct = correct[np.argsort(-proba[correct, c])][:correct_per_class]
        wrong = wrong[np.argsort(-proba[wrong].max(1))][:max_misclassified_per_class]
        pick = np.concatenate([correct, wrong]).astype(int)
        if not len(pick):
            continue
        images = np.asarray(x[pick])
        heatmaps, _ = gradcam(model, images, class_indices=[int(pred[i]) for i in pick])
        galleries[cls] = [
            GalleryItem(
                image=images[k],
                heatmap=heatmaps[k],
                title=f"true {cls}\npred {classes[pred[i]]} ({proba[i].max():.2f})",
                correct=bool(pred[i] == c),
                true=cls,
                pred=classes[pred[i]],
                confidence=float(proba[i].max()),
            )
            for k, i in enumerate(pick)
        ]
    return galleries


@dataclass
class TestSet:
    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    split_id: str  # identifies the test images, for the champion gate
    source: str


def manifest_test_set(split) -> TestSet:
    """The test split of a :class:`medtune.tracking.splits.LoadedSplit`."""
    cache = split.cache
    test_rows = split.manifest[split.manifest["split"] == "test"]
    split_id = f"{split.dataset}:{_hash(sorted(test_rows['sha256']))}"
    return TestSet(cache.x["test"], cache.y["test"], list(cache.paths["test"]), split_id, f"split run {split.run_id}")


def folder_test_set(
    folder: str, classes: list[str], image_size: int, channels: int, window: str | None = None
) -> TestSet:
    """Any folder of class sub-folders, validated as `split` validates (bad files are skipped);
    DICOM files decoded with the model's ``window``."""
    from medtune.datasets.images import decode_many
    from medtune.datasets.layout import detect_layout
    from medtune.datasets.scan import scan_dataset

    layout = detect_layout(Path(folder))
    scan, _ = scan_dataset(layout, window=window)
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    unknown = sorted({r.label for r in scan.records} - set(classes))
    if unknown:
        raise DataError(f"data_dir={folder}: classes {unknown} are unknown to the model (it knows {classes})")
    records = scan.records
    x = decode_many([r.path for r in records], image_size, channels, window=window)
    y = np.asarray([classes.index(r.label) for r in records], dtype=np.int32)
    split_id = f"folder:{_hash(sorted(r.sha256 for r in records))}"
    return TestSet(x, y, [r.path for r in records], split_id, f"folder {folder}")


def _hash(items) -> str:
    import hashlib

    h = hashlib.sha256()
    for item in items:
        h.update(str(item).encode())
    return h.hexdigest()[:16]
