"""Log an evaluation and its model card at the end of ``train`` and ``evaluate``: gather the facts,
render, log.

The content is computed by :mod:`medtune.evaluation` and :mod:`medtune.model_card` from plain
values; this module is the edge that reads the tracking store for them and logs the result
(``evaluation/`` and ``model_card/`` on the run).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from medtune.evaluation import Evaluation
from medtune.model_card import (
    DataInfo,
    GateInfo,
    ModelCard,
    ModelInfo,
    build_card,
    card_figures,
    data_from_split_report,
    data_from_test_labels,
    describe_examples,
    gradcam_examples,
    render_html,
    render_markdown,
    short_description,
)
from medtune.tracking.logger import RunLogger
from medtune.tracking.store import download_artifact, find_run

log = logging.getLogger(__name__)

CARD_DIR = "model_card"
CARD_JSON = f"{CARD_DIR}/model_card.json"


def model_info(model, metadata: dict, *, name: str, version: str, run_id: str, params_source: str) -> ModelInfo:
    from medtune.calibration import temperature_of, uncalibrated
    from medtune.models.ensemble import members_of
    from medtune.models.tta import base_of

    inner = uncalibrated(model) or model
    flipped = base_of(inner)
    return ModelInfo(
        name=name or "",
        version=str(version or ""),
        run_id=run_id,
        backbone=metadata.get("backbone", "custom"),
        weights_source=metadata.get("weights_source", "none"),
        weights_sha256=metadata.get("weights_sha256", ""),
        image_size=int(metadata["image_size"]),
        channels=int(metadata["channels"]),
        parameters=int(model.count_params()),
        params=dict(metadata.get("params", {})),
        params_source=params_source,
        ensemble=len(members_of(flipped or inner)) or 1,
        folds=int(metadata.get("folds", 0)),
        calibrated_on=metadata.get("calibrated_on", "validation images"),
        operating_thresholds=metadata.get("operating_thresholds"),
        flip=flipped is not None,
        temperature=temperature_of(model),
        conformal_level=metadata.get("conformal_level") if metadata.get("conformal_threshold") is not None else None,
        medtune_version=metadata.get("medtune_version", "unknown"),
        git_commit=metadata.get("git_commit", "unknown"),
    )


def params_source(search_run_id: str | None, params_file: str | None = None) -> str:
    """ "search run <id>, best trial <n>" (the trial read from the search run's tags), or the params file."""
    if not search_run_id:
        return f"params file {params_file}" if params_file else "unknown"
    run = find_run(search_run_id)
    if run is None:
        return f"search run {search_run_id} (not in this tracking store)"
    trial = run.data.tags.get("medtune.best_trial", "?")
    return f"search run {search_run_id}, best trial {trial}"


def split_data(split) -> DataInfo:
    from medtune.datasets.cache import manifest_hash

    return data_from_split_report(
        split.dataset, split.report, manifest_hash(split.manifest), f"split run {split.run_id}"
    )


def folder_data(dataset: str, classes: list[str], test) -> DataInfo:
    return data_from_test_labels(dataset, classes, test.y, test.source, test.split_id)


def gate_of_decision(decision) -> GateInfo | None:
    if decision is None:
        return None
    c = decision.comparison
    return GateInfo(
        decision.alias,
        float(decision.score),
        decision.champion_version,
        decision.champion_score,
        float(decision.margin),
        decision.reason,
        *((c.difference, c.low, c.high) if c else ()),
    )


def gate_of_version_tags(tags: dict) -> GateInfo | None:
    """The gate decision recorded on a registered version (see :mod:`medtune.promotion`)."""
    if "medtune.decision" not in tags:
        return None
    before = tags.get("medtune.champion_before", "none")
    score_before = tags.get("medtune.champion_score_before", "")
    interval = tags.get("medtune.gate_interval", "").strip("[]").split(",")
    return GateInfo(
        tags["medtune.decision"],
        float(tags.get("medtune.test_macro_f1", "nan")),
        None if before == "none" else before,
        float(score_before) if score_before else None,
        None,
        tags.get("medtune.decision_reason", ""),
        *((float(tags["medtune.gate_difference"]), *map(float, interval)) if len(interval) == 2 else ()),
    )


def log_model_card(
    run: RunLogger,
    ev,
    *,
    model: ModelInfo,
    data: DataInfo,
    test_split: str,
    gate: GateInfo | None,
    seed: int = 0,
    images: bool = False,
) -> ModelCard:
    """Compute the card of evaluation ``ev``, render it and log ``model_card/`` on ``run``.

    Grad-CAM examples are drawn over their test images only when ``images`` is True; otherwise they are
    described by figures (real test images are patient data).
    """
    from medtune.calibration import scale
    from medtune.metrics import reliability_bins

    examples = gradcam_examples(ev.galleries)
    card = build_card(
        model=model,
        data=data,
        metrics=ev.metrics,
        y_true=ev.y_true,
        proba=ev.proba,
        confusion=ev.confusion,
        test_split=test_split,
        gate=gate,
        examples={k: len(v) for k, v in examples.items()},
        seed=seed,
        sets=ev.sets,
        described=() if images else describe_examples(examples["right"] + examples["wrong"]),
    )
    before = reliability_bins(ev.y_true, scale(ev.proba, 1 / model.temperature)) if model.temperature != 1 else None
    figures = card_figures(ev.confusion, ev.roc, ev.reliability, data.classes, examples if images else {}, before)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "figures").mkdir()
        for key, png in figures.items():
            (root / "figures" / f"{key}.png").write_bytes(png)
        (root / "model_card.md").write_text(render_markdown(card, {k: f"figures/{k}.png" for k in figures}))
        (root / "model_card.html").write_text(render_html(card, figures))
        (root / "model_card.json").write_text(json.dumps(card.to_dict(), indent=2))
        run.directory(root, CARD_DIR)
    log.info("Model card logged: %s/model_card.html", CARD_DIR)
    return card


def describe_version(name: str, version: str, card: ModelCard) -> None:
    """Put the card's short form in the registered version's description."""
    from medtune.tracking import registry

    registry.describe_version(name, version, short_description(card))


def load_card(run_id: str) -> ModelCard | None:
    """The card logged on a run, or None when it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifact(run_id, CARD_JSON, Path(tmp), missing_ok=True)
        if path is None:
            return None
        try:
            return ModelCard.from_dict(json.loads(path.read_text()))
        except (TypeError, KeyError) as exc:  # a card of an older medtune
            log.warning("The model card of run %s cannot be read (%s): left aside", run_id, exc)
            return None


def log_evaluation(run: RunLogger, ev: Evaluation, classes: list[str]) -> None:
    """Metrics with a ``test_`` prefix and every evaluation artifact."""
    from medtune import reports

    run.metrics(ev.metrics)
    run.json(ev.report, "evaluation/classification_report.json")
    run.text(ev.report_text, "evaluation/classification_report.txt")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.csv"
        ev.predictions.to_csv(path, index=False)
        run.file(path, "evaluation")
    run.figure(
        reports.confusion_matrix_figure(ev.confusion, classes, title="test (counts)"), "evaluation/confusion_matrix.png"
    )
    run.figure(
        reports.confusion_matrix_figure(ev.confusion, classes, normalize=True, title="test (normalised by true class)"),
        "evaluation/confusion_matrix_normalized.png",
    )
    run.figure(reports.roc_figure(ev.roc, classes), "evaluation/roc_curves.png")
    run.figure(reports.reliability_figure(ev.reliability), "evaluation/reliability.png")
    from medtune.datasets.registry import safe_name

    for cls, items in ev.galleries.items():
        if not items:
            continue
        titles = [("OK " if it.correct else "WRONG ") + it.title for it in items]
        fig = reports.gradcam_grid(np.stack([it.image for it in items]), np.stack([it.heatmap for it in items]), titles)
        run.figure(fig, f"evaluation/gradcam/{safe_name(cls)}.png")
