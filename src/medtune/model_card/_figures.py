"""The card's figures as PNG bytes, drawn by :mod:`medtune.reports` from an evaluation."""

from __future__ import annotations

import io

import numpy as np

from medtune import reports


def _png(fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=reports.DPI, format="png")
    finally:
        fig.clear()
    return buf.getvalue()


def gradcam_examples(galleries: dict, per_kind: int = 4) -> dict[str, list]:
    """Up to ``per_kind`` right and wrong gallery items, taken class by class in turn."""
    picked: dict[str, list] = {"right": [], "wrong": []}
    for kind, correct in (("right", True), ("wrong", False)):
        queues = [[it for it in items if it.correct == correct] for items in galleries.values()]
        while len(picked[kind]) < per_kind and any(queues):
            for queue in queues:
                if queue and len(picked[kind]) < per_kind:
                    picked[kind].append(queue.pop(0))
    return picked


def card_figures(
    confusion: np.ndarray,
    roc: dict,
    reliability: dict,
    classes: list[str],
    examples: dict[str, list],
    reliability_before: dict | None = None,
) -> dict[str, bytes]:
    """``{figure key: PNG bytes}`` for the keys :data:`medtune.model_card.FIGURES` names.

    ``examples`` are drawn over their test images: pass none unless the card may show patient data.
    """
    out = {
        "confusion_matrix": _png(reports.confusion_matrix_figure(confusion, classes, title="test (counts)")),
        "roc_curves": _png(reports.roc_figure(roc, classes)),
        "reliability": _png(reports.reliability_figure(reliability)),
    }
    if reliability_before is not None:
        out["reliability_before"] = _png(reports.reliability_figure(reliability_before))
    for kind, items in examples.items():
        if items:
            out[f"gradcam_{kind}"] = _png(
                reports.gradcam_grid(
                    np.stack([it.image for it in items]),
                    np.stack([it.heatmap for it in items]),
                    [it.title for it in items],
                )
            )
    return out
