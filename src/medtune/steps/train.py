"""The ``train`` step: final training of the best trial, evaluation, registration and the champion gate."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from medtune import tracking
from medtune.calibration import calibrate, check_level
from medtune.datasets.registry import dataset_name
from medtune.errors import ConfigError
from medtune.models.tta import TTA_MODES
from medtune.options import default
from medtune.planning.budget import Budget
from medtune.planning.fingerprint import MachineFingerprint
from medtune.planning.rules import apply, default_plan
from medtune.tracking import cards, registry

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    dataset: str = default("dataset")
    data_dir: str | None = default("data_dir")
    search_run: str | None = default("search_run")
    params: str | None = default("params")
    epochs: int | None = default("train.epochs")
    image_size: int | None = default("train.image_size")
    patience: int | None = default("patience")
    mixed_precision: bool = default("mixed_precision")
    class_weights: bool | None = default("class_weights")
    margin: float = default("margin")
    register: bool = True
    seed: int = default("seed")
    split_run: str | None = default("split_run")
    weights: str | None = default("train.weights")
    ensemble: int | None = default("ensemble")
    folds: int | None = default("folds")
    budget: float | None = default("budget")
    replan: bool = False  # with a budget: the members after the first get the epochs their share pays for, at
    # the epoch time the previous member measured (main sets it when the epochs came from its plan)
    tta: str = default("tta")
    calibrate: bool = default("calibrate")
    conformal_level: float = default("conformal_level")
    card_images: bool = default("card_images")


@dataclass
class TrainOutcome:
    run_id: str
    metrics: dict
    model_name: str | None
    model_version: str | None
    decision: object | None
    seconds: float


def best_params_of_search(dataset: str, search_run: str | None) -> tuple[dict, str]:
    """The best trial's params of ``search_run`` (or of the latest finished search of ``dataset``).

    The params carry the search's ``weights`` option under the key ``weights`` when it had one.
    """
    if search_run in (None, "", "latest"):
        runs = [
            r
            for r in tracking.find_runs(dataset, "search", max_results=20)
            if r.data.tags.get("medtune.best_trial", "none") != "none"
        ]
        if not runs:
            raise ConfigError(
                f"dataset={dataset}: no finished search with a completed trial; run `medtune search --dataset {dataset}` "
                "first or pass --params <file>"
            )
        run_id = best_worker_run(runs).info.run_id
    else:
        run_id = search_run
        run = tracking.get_step_run(run_id, "search", "search_run", dataset)
        if run.data.tags.get("medtune.step") != "search":
            raise ConfigError(f"search_run={run_id}: not a medtune search run")
        if run.data.tags.get("medtune.best_trial", "none") == "none":
            raise ConfigError(f"search_run={run_id}: the search has no completed trial; pass --params <file> instead")
    with tempfile.TemporaryDirectory() as tmp:
        best = json.loads(tracking.download_artifact(run_id, "best_params.json", Path(tmp)).read_text())
    params = dict(best["params"])
    if best.get("weights") and "weights" not in params:
        params["weights"] = best["weights"]
    return params, run_id


def best_worker_run(runs: list):
    """Among finished search runs (newest first), the one holding the best trial of the newest one's study.

    Several workers of one study each end a parent run; the one that started last need not hold
    the study's best trial. Ties go to the newest run.
    """
    latest = runs[0]
    study, tags = latest.data.tags.get("medtune.study"), latest.data.tags
    if not study:
        return latest
    key = f"best_{tags.get('medtune.objective', 'val_macro_f1')}"
    sign = -1.0 if tags.get("medtune.direction") == "minimize" else 1.0
    workers = [r for r in runs if r.data.tags.get("medtune.study") == study and key in r.data.metrics]
    if not workers:
        return latest
    best = max(workers, key=lambda r: sign * r.data.metrics[key])
    if best is not latest:
        log.info(
            "Study %s: the best trial (%s=%.4f) is in search run %s, not in the latest one %s",
            study,
            key,
            best.data.metrics[key],
            best.info.run_id,
            latest.info.run_id,
        )
    return best


def params_from_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"params={path}: file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"params={path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from exc
    if isinstance(data, dict) and "params" in data and isinstance(data["params"], dict):
        data = data["params"]  # a best_params.json downloaded from a search
    if not isinstance(data, dict):
        raise ConfigError(f"params={path}: expected a mapping of parameter names to values")
    return data


def check_inputs(opts: TrainOptions) -> None:
    """Check the options and find what to train (a params file, a search run) before any split is
    made: a bad argument is one line, and nothing is logged or generated."""
    _check(opts)
    if opts.params:
        params_from_file(opts.params)
    else:
        best_params_of_search(dataset_name(opts.dataset), opts.search_run)


def run_train(opts: TrainOptions, budget: Budget | None = None) -> TrainOutcome:
    """Final training of the best trial (or a params file), evaluation, registration and the gate.

    ``budget``: the share of a larger budget (``main``); without it, ``opts.budget`` seconds from now.
    """
    _check(opts)
    t0 = time.perf_counter()
    if opts.params:  # what to train is found before any split is made or loaded
        params, search_run_id = params_from_file(opts.params), None
    else:
        params, search_run_id = best_params_of_search(dataset_name(opts.dataset), opts.search_run)
    set_now = apply(default_plan(MachineFingerprint.detect(), dataset_name(opts.dataset)), opts)
    if set_now:
        log.info("Defaults for this machine: %s", ", ".join(f"{f}={getattr(opts, f)}" for f in set_now))
    if opts.folds > 1:
        opts.ensemble = opts.folds  # one member per fold
    if budget is None and opts.budget:
        budget = Budget(opts.budget).start()
    from medtune.models import backbones_of, check_image_size
    from medtune.models.weights import resolve_weights

    searched_with = params.pop("weights", None)  # the search's option, not a model parameter
    weights_option = opts.weights or searched_with or "imagenet"
    check_image_size(backbones_of(params), opts.image_size)
    weights = resolve_weights(weights_option, backbones_of(params))  # one line, before any training
    import keras  # TensorFlow loads once the arguments are known to be good

    from medtune import training
    from medtune.tracking.splits import load_split
    from medtune.training.final import device_summary

    split = load_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    training.configure_threads()
    device, mixed = device_summary(opts.mixed_precision)
    try:
        with tracking.step_run(
            split.dataset,
            "train",
            run_name=_run_name(opts, split, params),
            tags={
                "medtune.split_run_id": split.run_id,
                "medtune.device": device,
                **({"medtune.search_run_id": search_run_id} if search_run_id else {}),
            },
        ) as run:
            source = weights.get(params.get("backbone", "custom"))
            _record_inputs(run, opts, split, params, search_run_id, mixed, weights_option, source, budget)
            model, out_of_fold = _train(opts, split, params, weights, mixed, budget, run)
            return _evaluate_and_register(opts, split, params, search_run_id, source, model, out_of_fold, run, t0)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # later steps (`main`) start clean


def _check(opts: TrainOptions) -> None:
    if opts.epochs is not None and opts.epochs < 1:
        raise ConfigError(f"epochs={opts.epochs}: expected at least 1")
    if opts.image_size is not None and not 16 <= opts.image_size <= 1024:
        raise ConfigError(f"image_size={opts.image_size}: expected 16..1024 pixels")
    if opts.patience is not None and opts.patience < 1:
        raise ConfigError(f"patience={opts.patience}: expected at least 1 epoch")
    if opts.ensemble is not None and not 1 <= opts.ensemble <= 10:
        raise ConfigError(f"ensemble={opts.ensemble}: expected 1 (one model) to 10 members")
    if opts.budget is not None and opts.budget <= 0:
        raise ConfigError(f"budget={opts.budget}: expected a positive duration")
    if opts.folds is not None and not (opts.folds == 0 or 2 <= opts.folds <= 10):
        raise ConfigError(f"folds={opts.folds}: expected 0 (the validation split) or 2 to 10 folds")
    check_level(opts.conformal_level)
    if opts.tta not in TTA_MODES:
        raise ConfigError(f"tta={opts.tta!r}: expected one of {', '.join(TTA_MODES)}")


def _run_name(opts: TrainOptions, split, params: dict) -> str:
    return (
        f"train-{split.dataset}-{params.get('backbone', 'custom')}-{opts.image_size}px"
        f"{f'-{opts.folds}folds' if opts.folds > 1 else f'-x{opts.ensemble}' if opts.ensemble > 1 else ''}-{time.strftime('%m%d-%H%M')}"
    )


def _record_inputs(run, opts, split, params, search_run_id, mixed, weights_option, source, budget) -> None:
    """What the run trains: params, options, weights' source and the training manifest."""
    run.params(
        {
            **params,
            "epochs": opts.epochs,
            "image_size": opts.image_size,
            "patience": opts.patience if opts.patience is not None else "auto",
            "ensemble": opts.ensemble,
            "folds": opts.folds,
            "budget_min": round(budget.seconds / 60, 2) if budget and budget.seconds else "none",
            "mixed_precision": mixed,
            "class_weights": opts.class_weights,
            "seed": opts.seed,
            "params_source": opts.params or f"search {search_run_id}",
        }
    )
    if params.get("backbone", "custom") != "custom":
        run.params({"weights": weights_option})
        run.tags(
            {
                "medtune.weights_source": source.source if source else "none",
                "medtune.weights_sha256": source.sha256 if source else "",
            }
        )
    tracking.log_manifest(split.manifest, split.root, split.dataset, "training")


def _train(opts: TrainOptions, split, params: dict, weights: dict, mixed: bool, budget, run):
    """Fit the members, average them, choose the test-time flip; record the training's figures.

    Returns the model and, with folds, the pooled images' labels and out-of-fold probabilities
    (as served: with the flip when it is on) for calibration; else None (the validation split)."""
    import keras

    from medtune import reports, training
    from medtune.progress import short_params
    from medtune.training.final import choose_flip, final_fit
    from medtune.training.folds import pool_groups

    classes, cache = split.classes, split.cache
    keras.utils.set_random_seed(opts.seed)
    class_weight = training.balanced_class_weights(cache.y["train"], len(classes)) if opts.class_weights else None
    log.info(
        "Final training (%s, mixed precision %s%s): %s",
        split.dataset,
        "on" if mixed else "off",
        f", ensemble of {opts.ensemble}" if opts.ensemble > 1 else "",
        short_params(params),
    )
    fitted = final_fit(
        params,
        cache,
        len(classes),
        class_weight=class_weight,
        weights=weights,
        epochs=opts.epochs,
        patience=opts.patience,
        ensemble=opts.ensemble,
        seed=opts.seed,
        mixed=mixed,
        report=lambda prefix, epoch, logs: run.epoch(logs, epoch, prefix=prefix, synchronous=False),
        budget=budget,
        replan=opts.replan,
        folds=opts.folds,
        groups=pool_groups(split.manifest) if opts.folds > 1 else None,
    )
    if opts.ensemble > 1:
        from medtune.models.ensemble import build_ensemble

        model = build_ensemble(fitted.members)
    else:
        model = fitted.members[0]
    oof = fitted.out_of_fold
    y_val = oof["y"] if oof else cache.y["val"]
    model, flipped, scores = choose_flip(model, cache.x["val"], y_val, opts.tta, proba=oof)
    if scores:
        log.info(
            "Test-time flip %s: %s macro-F1 %.4f with it, %.4f without%s",
            "on" if flipped else "off",
            "out-of-fold" if oof else "validation",
            scores["flip"],
            scores["plain"],
            " (asked for)" if opts.tta == "flip" else "",
        )

    history = fitted.histories[0]
    best_epoch = int(np.nanargmax(history["val_macro_f1"])) if history.get("val_macro_f1") else -1
    if class_weight:
        run.json({classes[k]: v for k, v in class_weight.items()}, "class_weights.json")
    run.params({"tta": "flip" if flipped else "none"})
    run.metrics(
        {
            **fitted.metrics,
            **({"val_macro_f1_plain": scores["plain"], "val_macro_f1_flip": scores["flip"]} if scores else {}),
            **{
                f"member{i}_best_val_macro_f1": float(np.nanmax(h["val_macro_f1"]))
                for i, h in enumerate(fitted.histories)
                if opts.ensemble > 1 and h.get("val_macro_f1")
            },
            "best_epoch": best_epoch,
            "epochs_run": len(history.get("loss", [])),
            "best_val_macro_f1": float(np.nanmax(history["val_macro_f1"])) if best_epoch >= 0 else float("nan"),
            **(budget.record() if budget is not None else {}),
        }
    )
    run.figure(reports.learning_curves(history), "learning_curves.png")
    return model, ((y_val, oof["flip" if flipped else "plain"]) if oof else None)


def _calibrate(opts: TrainOptions, cache, model, run, out_of_fold=None):
    """The temperature and the prediction sets' threshold, fitted on halves of the validation images
    (with folds: of the pooled images' ``out_of_fold`` labels and probabilities)."""
    y, proba = out_of_fold or (cache.y["val"], None)
    model, fit = calibrate(
        model, cache.x["val"], y, enabled=opts.calibrate, level=opts.conformal_level, seed=opts.seed, proba=proba
    )
    run.params({"calibrate": opts.calibrate, "conformal_level": opts.conformal_level})
    run.metrics(fit.metrics())
    log.info(
        "Temperature %.3f (%s ECE %.4f -> %.4f); prediction sets at %.0f %%: threshold %.4f",
        fit.temperature,
        "out-of-fold" if out_of_fold else "validation",
        fit.val_ece_before,
        fit.val_ece_after,
        100 * opts.conformal_level,
        fit.conformal_threshold,
    )
    return model, fit


def _evaluate_and_register(opts, split, params, search_run_id, source, model, out_of_fold, run, t0) -> TrainOutcome:
    """Score the test images, log the model, pass it through the champion gate, write the card."""
    from medtune import promotion, serving, training
    from medtune.evaluation import evaluate_model, manifest_test_set
    from medtune.serving import predict_on_split

    classes, cache = split.classes, split.cache
    test = manifest_test_set(split)
    model, fit = _calibrate(opts, cache, model, run, out_of_fold)
    ev = evaluate_model(model, test.x, test.y, classes, test.paths, metadata=fit.metadata())
    cards.log_evaluation(run, ev, classes)
    run.tags({"medtune.test_split": test.split_id})
    log.info(
        "test accuracy %.4f, macro-F1 %.4f, macro ROC-AUC %.4f",
        ev.metrics["test_accuracy"],
        ev.metrics["test_macro_f1"],
        ev.metrics.get("test_roc_auc_macro", float("nan")),
    )
    metadata = serving.build_metadata(
        classes,
        opts.image_size,
        cache.x["train"].shape[-1],
        dataset=split.dataset,
        backbone=params.get("backbone", "custom"),
        weights_source=source.source if source else "none",
        weights_sha256=source.sha256 if source else "",
        params=params,
        split_run_id=split.run_id,
        window=split.window,
        search_run_id=search_run_id or "",
        folds=opts.folds,
        calibrated_on=(
            f"the out-of-fold predictions of {len(out_of_fold[0])} pooled training and validation images"
            if out_of_fold
            else "validation images"
        ),
        **fit.metadata(),
    )
    model_name = f"medtune-{split.dataset}" if opts.register else None
    info = serving.log_model(model, metadata, registered_model_name=model_name)
    version, decision = None, None
    if model_name:
        version = registry.registered_version(model_name, info)
        decision = registry.promote(
            model_name,
            version,
            test.split_id,
            test.y,
            ev.proba.argmax(1),
            len(classes),
            margin=opts.margin,
            champion_predictions=lambda uri: predict_on_split(uri, split, test),
        )
        run.tags({**decision.tags(), "medtune.model_version": version})
        run.metrics(
            {
                "champion_score_before": decision.champion_score
                if decision.champion_score is not None
                else float("nan"),
                "promoted": 1.0 if decision.alias == promotion.CHAMPION else 0.0,
            }
        )
    _log_card(
        run,
        ev,
        model,
        metadata,
        split,
        test,
        decision,
        model_name,
        version,
        cards.params_source(search_run_id, opts.params),
        opts.seed,
        opts.card_images,
    )
    training.release_model(model)
    return TrainOutcome(run.run_id, ev.metrics, model_name, version, decision, time.perf_counter() - t0)


def _log_card(run, ev, model, metadata, split, test, decision, model_name, version, source: str, seed, images) -> None:
    """The model card on the train run; its short form in the registered version's description."""
    info = cards.model_info(model, metadata, name=model_name, version=version, run_id=run.run_id, params_source=source)
    card = cards.log_model_card(
        run,
        ev,
        model=info,
        data=cards.split_data(split),
        test_split=test.split_id,
        gate=cards.gate_of_decision(decision),
        seed=seed,
        images=images,
    )
    if model_name:
        cards.describe_version(model_name, version, card)
