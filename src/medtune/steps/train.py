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
from medtune.datasets.registry import dataset_name
from medtune.errors import ConfigError
from medtune.steps import model_card as cards
from medtune.tracking import registry

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    dataset: str = "synthetic"
    data_dir: str | None = None
    search_run: str | None = "latest"
    params: str | None = None  # a YAML/JSON file of explicit params
    epochs: int | None = None  # None (auto): sized from the machine, see medtune.plan
    image_size: int | None = None  # auto
    patience: int | None = None  # auto: planning.rules.early_stopping_patience
    mixed_precision: bool = True
    class_weights: bool = True
    margin: float = 0.0
    register: bool = True
    seed: int = 42
    split_run: str | None = None
    weights: str | None = None  # imagenet | none | file | folder; None: what the search used
    ensemble: int = 1  # members (seeds of the configuration), averaged in one model
    budget: float | None = None  # seconds for the whole step; each member stops at an epoch boundary in its share
    replan: bool = False  # with a budget: the members after the first get the epochs their share pays for, at
    # the epoch time the previous member measured (main sets it when the epochs came from its plan)
    tta: str = "auto"  # test-time left-right flip: auto (when it scores better on validation) | flip | none


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


def device_summary(mixed_precision: bool) -> tuple[str, bool]:
    """Use the GPU when TensorFlow sees one (mixed precision there, unless turned off)."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError):
                pass
        if mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        return f"GPU ({len(gpus)}: {gpus[0].name})", bool(mixed_precision)
    keras.mixed_precision.set_global_policy("float32")
    return "CPU", False


def _epoch_logger(run: tracking.RunLogger, epochs: int, prefix: str = "", title: str = "final training"):
    import keras

    from medtune.progress import Counter, finite

    class EpochLogger(keras.callbacks.Callback):
        """Per-epoch metrics to the run, and one readable line per epoch with the time left (a bar on a terminal)."""

        def on_train_begin(self, logs=None):
            if not hasattr(self, "bar"):  # one bar over all stages
                self.bar = Counter(title, epochs, "epoch", lines=False)

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            lr = getattr(self.model.optimizer, "learning_rate", None)
            if lr is not None:
                try:
                    logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
                except Exception:  # noqa: BLE001
                    pass
            run.epoch(logs, epoch, prefix=prefix, synchronous=False)
            shown = {
                k: v for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1")
            }
            text = ", ".join(f"{k}={float(v):.4f}" for k, v in shown.items() if finite(v))
            self.bar.to(epoch + 1)
            log.info(
                "%sepoch %d/%d: %s (%s; early stopping may end sooner)",
                prefix.replace("_", " "),
                epoch + 1,
                epochs,
                text,
                self.bar.eta(),
            )

        def on_train_end(self, logs=None):
            if self.model.stop_training or self.bar.done >= epochs:
                self.bar.close()

    return EpochLogger()


def run_train(opts: TrainOptions) -> TrainOutcome:
    if opts.epochs is not None and opts.epochs < 1:
        raise ConfigError(f"epochs={opts.epochs}: expected at least 1")
    if opts.image_size is not None and not 16 <= opts.image_size <= 1024:
        raise ConfigError(f"image_size={opts.image_size}: expected 16..1024 pixels")
    if opts.patience is not None and opts.patience < 1:
        raise ConfigError(f"patience={opts.patience}: expected at least 1 epoch")
    if not 1 <= opts.ensemble <= 10:
        raise ConfigError(f"ensemble={opts.ensemble}: expected 1 (one model) to 10 members")
    if opts.budget is not None and opts.budget <= 0:
        raise ConfigError(f"budget={opts.budget}: expected a positive duration")
    t0 = time.perf_counter()
    if opts.params:  # what to train is found before any split is made or loaded
        params, search_run_id = params_from_file(opts.params), None
    else:
        params, search_run_id = best_params_of_search(dataset_name(opts.dataset), opts.search_run)
    from medtune.plan import fill

    fill(opts, dataset_name(opts.dataset), {"epochs": "final_epochs", "image_size": "final_image_size"})
    auto_patience = opts.patience is None
    if auto_patience:
        from medtune.planning.rules import early_stopping_patience

        opts.patience = early_stopping_patience(opts.epochs, params.get("lr_schedule") or "constant")
    from medtune.models import backbones_of, check_image_size
    from medtune.models.weights import resolve_weights

    searched_with = params.pop("weights", None)  # the search's option, not a model parameter
    weights_option = opts.weights or searched_with or "imagenet"
    backbones = backbones_of(params)
    check_image_size(backbones, opts.image_size)
    weights = resolve_weights(weights_option, backbones)  # one line, before any training
    import keras  # TensorFlow loads once the arguments are known to be good

    from medtune import training
    from medtune.steps.data import load_split
    from medtune.steps.prerequisites import ensure_split

    ensure_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    split = load_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    training.configure_threads()
    device, mixed = device_summary(opts.mixed_precision)
    try:
        return _train_and_register(
            opts, split, params, search_run_id, device, mixed, t0, weights, weights_option, auto_patience=auto_patience
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")  # later steps (`main`) start clean


def _train_and_register(
    opts: TrainOptions,
    split,
    params: dict,
    search_run_id: str | None,
    device: str,
    mixed: bool,
    t0: float,
    weights: dict,
    weights_option: str,
    *,
    auto_patience: bool = False,  # the patience follows re-planned epochs
) -> TrainOutcome:
    import keras

    from medtune import promotion, serving, training
    from medtune.evaluation import evaluate_model
    from medtune.steps.evaluate import log_evaluation, manifest_test_set

    classes, cache = split.classes, split.cache
    n_classes = len(classes)
    keras.utils.set_random_seed(opts.seed)
    tags = {"medtune.split_run_id": split.run_id, "medtune.device": device}
    if search_run_id:
        tags["medtune.search_run_id"] = search_run_id
    run_name = (
        f"train-{split.dataset}-{params.get('backbone', 'custom')}-{opts.image_size}px"
        f"{f'-x{opts.ensemble}' if opts.ensemble > 1 else ''}-{time.strftime('%m%d-%H%M')}"
    )
    with tracking.step_run(split.dataset, "train", run_name=run_name, tags=tags) as run:
        class_weight = training.balanced_class_weights(cache.y["train"], n_classes) if opts.class_weights else None
        run.params(
            {
                **params,
                "epochs": opts.epochs,
                "image_size": opts.image_size,
                "patience": opts.patience,
                "ensemble": opts.ensemble,
                "budget_min": round(opts.budget / 60, 2) if opts.budget else "none",
                "mixed_precision": mixed,
                "class_weights": opts.class_weights,
                "seed": opts.seed,
                "params_source": opts.params or f"search {search_run_id}",
            }
        )
        backbone = params.get("backbone", "custom")
        source = weights.get(backbone)
        if backbone != "custom":
            run.params({"weights": weights_option})
            run.tags(
                {
                    "medtune.weights_source": source.source if source else "none",
                    "medtune.weights_sha256": source.sha256 if source else "",
                }
            )
        if class_weight:
            run.json({classes[k]: v for k, v in class_weight.items()}, "class_weights.json")
        tracking.log_manifest(split.manifest, split.root, split.dataset, "training")
        from medtune.progress import short_params

        log.info(
            "Final training on %s (%s, mixed precision %s%s): %s",
            device,
            split.dataset,
            "on" if mixed else "off",
            f", ensemble of {opts.ensemble}" if opts.ensemble > 1 else "",
            short_params(params),
        )
        from medtune.planning.budget import Budget

        budget = Budget(opts.budget).start() if opts.budget else None
        # evaluation, Grad-CAM, model card and registration after training: a reserve of the budget
        reserve = min(max(30.0, 0.08 * opts.budget), 240.0) if opts.budget else 0.0
        members, histories = [], []
        for i in range(opts.ensemble):
            left = max(0.0, budget.remaining() - reserve) if budget else None
            if i and left is not None and opts.replan:
                _replan_members(opts, params, histories[-1], left, i, auto_patience, run)
            # what is left, split evenly between the members still to train
            share = Budget(left / (opts.ensemble - i)).start() if left is not None else None
            prefix = f"member{i}_" if opts.ensemble > 1 else ""
            member, history = _fit_member(
                params,
                cache,
                n_classes,
                class_weight,
                weights,
                opts,
                run,
                seed=opts.seed + i,
                prefix=prefix,
                budget=share,
            )
            if mixed:  # evaluate, explain and log a float32 model: it serves on any CPU
                member = float32_copy(member, params, tuple(cache.x["train"].shape[1:]), n_classes)
            members.append(member)
            histories.append(history)
        if budget is not None:
            run.metrics(budget.record())
        if opts.ensemble > 1:
            from medtune.models.ensemble import build_ensemble

            model = build_ensemble(members)
            run.metrics(
                {
                    f"member{i}_best_val_macro_f1": float(np.nanmax(h["val_macro_f1"]))
                    for i, h in enumerate(histories)
                    if h.get("val_macro_f1")
                }
            )
        else:
            model = members[0]
        history = histories[0]
        best_epoch = int(np.nanargmax(history["val_macro_f1"])) if history.get("val_macro_f1") else -1
        run.metrics(
            {
                "best_epoch": best_epoch,
                "epochs_run": len(history.get("loss", [])),
                "best_val_macro_f1": float(np.nanmax(history["val_macro_f1"])) if best_epoch >= 0 else float("nan"),
            }
        )
        from medtune import reports

        run.figure(reports.learning_curves(history), "learning_curves.png")
        model = choose_tta(model, cache.x["val"], cache.y["val"], opts.tta, run)

        test = manifest_test_set(split)
        ev = evaluate_model(model, test.x, test.y, classes, test.paths)
        log_evaluation(run, ev, classes)
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
            backbone=backbone,
            weights_source=source.source if source else "none",
            weights_sha256=source.sha256 if source else "",
            params=params,
            split_run_id=split.run_id,
            search_run_id=search_run_id or "",
        )
        model_name = f"medtune-{split.dataset}" if opts.register else None
        info = serving.log_model(model, metadata, registered_model_name=model_name)
        version, decision = None, None
        if model_name:
            version = registry.registered_version(model_name, info)
            decision = registry.promote(
                model_name,
                version,
                ev.metrics["test_macro_f1"],
                test.split_id,
                margin=opts.margin,
                rescore=lambda uri: rescore_on_split(uri, split, test),
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
        )
        training.release_model(model)
        return TrainOutcome(run.run_id, ev.metrics, model_name, version, decision, time.perf_counter() - t0)


def _replan_members(opts: TrainOptions, params, history, remaining_s: float, i: int, auto_patience: bool, run):
    """Rule 6 for the members still to train, at the steady epoch time member ``i - 1`` measured:
    the plan's estimate (from the search, or the cost model) was off by up to 2x on small data."""
    from medtune.planning.rules import early_stopping_patience, member_epochs, steady_epoch_seconds

    seconds = [float(t) for t in history.get("epoch_seconds", [])]
    if not seconds:
        return
    epoch_s = steady_epoch_seconds(seconds, stages=history.get("stage"))
    epochs = member_epochs(remaining_s, opts.ensemble - i, epoch_s)
    run.metrics({f"member{i}_planned_epochs": epochs, f"member{i - 1}_epoch_seconds": epoch_s})
    if epochs != opts.epochs:
        log.info(
            "Members %d-%d re-planned from member %d's %.1f s per epoch: %d epochs each (were %d)",
            i,
            opts.ensemble - 1,
            i - 1,
            epoch_s,
            epochs,
            opts.epochs,
        )
        opts.epochs = epochs
        if auto_patience:
            opts.patience = early_stopping_patience(epochs, params.get("lr_schedule") or "constant")


def _fit_member(
    params: dict,
    cache,
    n_classes: int,
    class_weight,
    weights,
    opts: TrainOptions,
    run,
    *,
    seed: int,
    prefix: str,
    budget=None,
):
    """One model of the final training: fitted with early stopping, the best epoch's weights restored."""
    import keras

    from medtune import training

    keras.utils.set_random_seed(seed)
    setup = training.prepare_fit(
        params,
        cache.x["train"],
        cache.y["train"],
        cache.x["val"],
        cache.y["val"],
        n_classes,
        seed=seed,
        weights=weights,
    )
    model = setup.model
    title = f"final training{' ' + prefix.rstrip('_') if prefix else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "best.weights.h5"
        callbacks = [
            *setup.callbacks,
            training.StagedEarlyStopping(
                monitor="val_macro_f1", mode="max", patience=opts.patience, restore_best_weights=True
            ),
            *(
                [
                    keras.callbacks.ReduceLROnPlateau(
                        monitor="val_loss", factor=0.5, patience=max(2, opts.patience // 3), min_lr=1e-6
                    )
                ]
                if params.get("lr_schedule", "constant") == "constant"
                else []
            ),  # cosine sets its own rate
            keras.callbacks.ModelCheckpoint(
                str(ckpt), monitor="val_macro_f1", mode="max", save_best_only=True, save_weights_only=True
            ),
            *([training.TimeLimit(budget)] if budget is not None else []),
            _epoch_logger(run, opts.epochs, prefix, title),
        ]
        history = training.fit_stages(
            model,
            params,
            setup.train_ds,
            setup.val_ds,
            y_val=cache.y["val"],
            epochs=opts.epochs,
            class_weight=class_weight,
            callbacks=callbacks,
            stop_requested=(lambda: budget.spent()) if budget is not None else None,
            budget=budget,
            on_stage=lambda st, n: log.info(
                "Stage %d: epochs %d-%d, learning rate %.2g, %d trainable layers",
                st.number,
                st.first_epoch + 1,
                st.end_epoch,
                st.learning_rate,
                n,
            ),
        )
        if ckpt.exists():
            model.load_weights(ckpt)  # the best epoch, whatever early stopping did
    return model, history


def _log_card(run, ev, model, metadata, split, test, decision, model_name, version, source: str, seed: int) -> None:
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
    )
    if model_name:
        cards.describe_version(model_name, version, card)


TTA_MODES = ("auto", "flip", "none")


def choose_tta(model, x_val, y_val, mode: str, run):
    """The final model with test-time flipping when ``mode`` says so (``auto``: when its validation
    macro-F1 is higher; the test images play no part). Logs both validation scores and the choice."""
    from medtune.models.tta import with_flip
    from medtune.training import predict_proba, validation_scores

    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode!r}: expected one of {', '.join(TTA_MODES)}")
    if mode == "none":
        run.params({"tta": "none"})
        return model
    flipped = with_flip(model)
    scores = {}
    for name, candidate in (("plain", model), ("flip", flipped)):
        scores[name] = validation_scores(y_val, predict_proba(candidate, x_val))["val_macro_f1"]
    use = mode == "flip" or scores["flip"] > scores["plain"]
    run.params({"tta": "flip" if use else "none"})
    run.metrics({"val_macro_f1_plain": scores["plain"], "val_macro_f1_flip": scores["flip"]})
    log.info(
        "Test-time flip %s: validation macro-F1 %.4f with it, %.4f without%s",
        "on" if use else "off",
        scores["flip"],
        scores["plain"],
        " (asked for)" if mode == "flip" else "",
    )
    return flipped if use else model


def rescore_on_split(model_uri: str, split, test) -> float | None:
    """Test macro-F1 of a registered model on ``split``'s test images, at the model's own image size.

    None when the model cannot be scored there (other classes or channels): the gate then keeps
    the champion and makes the new version the challenger.
    """
    from medtune import serving
    from medtune.steps.data import load_split
    from medtune.steps.evaluate import manifest_test_set, score_macro_f1

    with tempfile.TemporaryDirectory() as tmp:
        model, meta = serving.load_keras_from_uri(model_uri, Path(tmp))
    if list(meta.get("classes", [])) != list(split.classes):
        log.warning(
            "%s predicts classes %s, not %s: it cannot be scored on this split",
            model_uri,
            meta.get("classes"),
            split.classes,
        )
        return None
    if int(meta.get("channels", 3)) != test.x.shape[-1]:
        log.warning("%s takes %s channel(s): it cannot be scored on this split", model_uri, meta.get("channels"))
        return None
    size = int(meta.get("image_size", 0))
    if size != test.x.shape[1]:  # the same test images, cached at the model's own size
        test = manifest_test_set(load_split(split.dataset, size, split_run=split.run_id))
    return score_macro_f1(model, test, list(split.classes))


def float32_copy(model, params: dict, input_shape: tuple, n_classes: int):
    """The same network and weights under the float32 policy (for a model trained in mixed precision).

    A mixed-precision model computes in float16, which CPUs (where it is usually served) run
    slowly or not at all; the variables are float32 either way, so the weights copy over exactly.
    """
    import keras

    from medtune.models import build_model

    keras.mixed_precision.set_global_policy("float32")
    copy = build_model(params, input_shape, n_classes)
    copy.set_weights(model.get_weights())
    return copy
