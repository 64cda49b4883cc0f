"""The ``evaluate`` step: score a model on the held-out test split (or any folder) and log it all."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medtune import tracking
from medtune.errors import DataError
from medtune.evaluation import Evaluation, evaluate_model, folder_test_set, manifest_test_set
from medtune.tracking import cards, registry

log = logging.getLogger(__name__)


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
        test = folder_test_set(opts.data_dir, classes, size, channels, meta.get("window"))
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
        cards.log_evaluation(run, ev, classes)
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
