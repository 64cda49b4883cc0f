"""The ``evaluate`` step: score a model on the held-out test split (or any folder) and log it all."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtune import tracking
from medtune.errors import DataError
from medtune.evaluation import Evaluation, evaluate_model
from medtune.steps import model_card as cards
from medtune.tracking import registry

log = logging.getLogger(__name__)


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


def folder_test_set(folder: str, classes: list[str], image_size: int, channels: int) -> TestSet:
    """Any folder of class sub-folders, validated as `split` validates (bad files are skipped)."""
    from medtune.datasets.images import decode_many
    from medtune.datasets.layout import detect_layout
    from medtune.datasets.scan import scan_dataset

    layout = detect_layout(Path(folder))
    scan, _ = scan_dataset(layout)
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    unknown = sorted({r.label for r in scan.records} - set(classes))
    if unknown:
        raise DataError(f"data_dir={folder}: classes {unknown} are unknown to the model (it knows {classes})")
    records = scan.records
    x = decode_many([r.path for r in records], image_size, channels)
    y = np.asarray([classes.index(r.label) for r in records], dtype=np.int32)
    split_id = f"folder:{_hash(sorted(r.sha256 for r in records))}"
    return TestSet(x, y, [r.path for r in records], split_id, f"folder {folder}")


def _hash(items) -> str:
    import hashlib

    h = hashlib.sha256()
    for item in items:
        h.update(str(item).encode())
    return h.hexdigest()[:16]


def log_evaluation(run: tracking.RunLogger, ev: Evaluation, classes: list[str]) -> None:
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


def predict_on_split(model_uri: str, split, test: TestSet) -> np.ndarray | None:
    """The classes a registered model predicts for ``test``'s images (in their order), at its own image size.

    None when it cannot be scored there (other classes or channels): the gate then keeps the champion
    and makes the new version the challenger.
    """
    from medtune.serving import load_keras_from_uri
    from medtune.tracking.splits import load_split
    from medtune.training import predict_proba

    with tempfile.TemporaryDirectory() as tmp:
        model, meta = load_keras_from_uri(model_uri, Path(tmp))
    if list(meta.get("classes", [])) != list(split.classes) or int(meta.get("channels", 3)) != test.x.shape[-1]:
        log.warning(
            "%s predicts %s from %s channel(s): it cannot be scored on this split",
            model_uri,
            meta.get("classes"),
            meta.get("channels"),
        )
        return None
    x, size = test.x, int(meta.get("image_size", 0))
    if size != test.x.shape[1]:  # the same test images, cached at the model's own size
        other = manifest_test_set(load_split(split.dataset, size, split_run=split.run_id))
        where = {path: i for i, path in enumerate(other.paths)}
        if sorted(where) != sorted(test.paths):
            return None
        x = other.x[[where[path] for path in test.paths]]
    return predict_proba(model, x).argmax(1)


@dataclass
class EvaluateOptions:
    model_uri: str
    dataset: str | None = None
    data_dir: str | None = None
    split_run: str | None = None


def run_evaluate(opts: EvaluateOptions) -> tuple[str, Evaluation]:
    """Evaluate a logged medtune model (``models:/name@alias``, ``runs:/id/model``...)."""
    from medtune.serving import load_keras_from_uri

    with tempfile.TemporaryDirectory() as tmp:
        model, meta = load_keras_from_uri(opts.model_uri, Path(tmp))
    classes, size, channels = meta["classes"], meta["image_size"], meta["channels"]
    dataset = opts.dataset or meta.get("dataset") or "synthetic"
    tags = {"medtune.model_uri": opts.model_uri, **registry.registry_tags(opts.model_uri)}
    if opts.data_dir and opts.dataset is None:
        test = folder_test_set(opts.data_dir, classes, size, channels)
        data = cards.folder_data(dataset, classes, test)
    else:
        from medtune.tracking.splits import load_split

        split_run = opts.split_run or _model_split_run(meta, dataset)
        split = load_split(dataset, size, split_run=split_run, data_dir=opts.data_dir)
        if list(split.classes) != list(classes):
            raise DataError(f"dataset={dataset}: classes {split.classes} differ from the model's {classes}")
        test = manifest_test_set(split)
        tags["medtune.split_run_id"] = split.run_id
        data = cards.split_data(split)
    tags["medtune.test_split"] = test.split_id
    with tracking.step_run(dataset, "evaluate", run_name=f"evaluate-{dataset}", tags=tags) as run:
        run.params({"model_uri": opts.model_uri, "test_source": test.source, "n_test": len(test.y), "image_size": size})
        ev = evaluate_model(model, test.x, test.y, classes, test.paths, metadata=meta)
        log_evaluation(run, ev, classes)
        _log_card(run, ev, model, meta, tags, data, test.split_id)
        log.info(
            "test accuracy %.4f, macro-F1 %.4f, ROC-AUC %.4f",
            ev.metrics["test_accuracy"],
            ev.metrics["test_macro_f1"],
            ev.metrics.get("test_roc_auc_macro", float("nan")),
        )
        return run.run_id, ev


def _log_card(run, ev, model, meta: dict, tags: dict, data, test_split: str) -> None:
    """The model card of this evaluation; version, source and gate of a registered model from the registry."""
    name, version, train_run, gate = tags.get("medtune.model_name", ""), tags.get("medtune.model_version", ""), "", None
    if name:
        mv = registry.model_version(name, version)
        train_run = mv.run_id
        trained_card = cards.load_card(train_run)
        gate = trained_card.gate if trained_card else cards.gate_of_version_tags(mv.tags or {})
    info = cards.model_info(
        model,
        meta,
        name=name,
        version=version,
        run_id=train_run,
        params_source=cards.params_source(meta.get("search_run_id")),
    )
    cards.log_model_card(run, ev, model=info, data=data, test_split=test_split, gate=gate)


def _model_split_run(meta: dict, dataset: str) -> str | None:
    """The split run the model was trained on, when it is of ``dataset`` and still in the store.

    Its test images are the ones the model never saw; the latest split of the dataset may be
    another one (new files, another seed) whose test images the model was trained on.
    """
    run_id = meta.get("split_run_id")
    if not run_id or meta.get("dataset") != dataset:
        return None
    run = tracking.find_run(run_id)
    if run is None:
        log.warning(
            "the model's split run %s is not in this tracking store: using the latest split of %s", run_id, dataset
        )
        return None
    if run.info.status != "FINISHED" or run.data.tags.get(tracking.TAG_DATASET) != dataset:
        return None
    return run_id
