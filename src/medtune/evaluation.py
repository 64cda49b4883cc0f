"""Evaluate a trained classifier on held-out images: metrics, tables and Grad-CAM galleries.

Compute only; :mod:`medtune.steps.evaluate` renders and logs. Never imports mlflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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
