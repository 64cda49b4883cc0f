"""``main``: split, search, train (with evaluation and promotion), each step its own run."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from medtune import tracking

log = logging.getLogger(__name__)


@dataclass
class PipelineOptions:
    dataset: str = "synthetic"
    data_dir: str | None = None
    engine: str = "optuna"
    space: str | None = None  # None (auto): sized from the machine, as for the separate steps
    trials: int | None = None
    search_epochs: int | None = None
    search_image_size: int | None = None
    epochs: int | None = None
    image_size: int | None = None
    objective: str = "val_macro_f1"
    pruner: str | None = None
    class_weights: bool = True
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    patience: int | None = None  # auto: planning.rules.early_stopping_patience
    margin: float = 0.0
    mixed_precision: bool = True
    weights: str = "imagenet"
    seed: int = 42
    budget: float | None = None  # seconds for the whole pipeline: a plan from the fingerprints sizes everything
    ensemble: int | None = None  # final-training members (auto: the plan's, 1 without a budget)
    warm_start: str = "recipes"
    tta: str = "auto"  # test-time flip in the final model: auto (when it scores better on validation) | flip | none
    exclude_classes: tuple[str, ...] = ()  # class folders the split leaves out


@dataclass
class PipelineOutcome:
    split_run: str
    search_run: str
    train: object
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        m = self.train.metrics
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        alias = f" @{self.train.decision.alias}" if self.train.decision else ""
        return (
            f"main: test accuracy={m['test_accuracy']:.4f} macro_f1={m['test_macro_f1']:.4f} "
            f"roc_auc_macro={m.get('test_roc_auc_macro', float('nan')):.4f}; "
            f"{self.train.model_name} v{self.train.model_version}{alias}; {steps}"
        )


def run_pipeline(opts: PipelineOptions) -> PipelineOutcome:
    """Split (reusing a finished split of the same files), search, train with evaluation and the gate.

    The pipeline has its own run in ``medtune-<dataset>``, the parent of its step runs, with the
    plan, the budget used and the test metrics; under ``mlflow run -e main`` the launcher run is
    linked to it and tagged with the step run ids.
    """

    from medtune.datasets.registry import dataset_name
    from medtune.plan import fill
    from medtune.steps.search import SearchOptions, check_options, run_search
    from medtune.steps.split import SplitOptions, run_split
    from medtune.steps.train import TrainOptions, run_train

    search_opts = SearchOptions(
        dataset=opts.dataset,
        data_dir=opts.data_dir,
        engine=opts.engine,
        space=opts.space,
        trials=opts.trials,
        epochs=opts.search_epochs,
        image_size=opts.search_image_size,
        objective=opts.objective,
        pruner=opts.pruner,
        class_weights=opts.class_weights,
        timeout=opts.timeout,
        study=opts.study,
        storage=opts.storage,
        seed=opts.seed,
        weights=opts.weights,
        warm_start=opts.warm_start,
    )
    check_options(search_opts)  # every option is checked before the first step starts
    if opts.epochs is not None and opts.epochs < 1:
        from medtune.errors import ConfigError

        raise ConfigError(f"epochs={opts.epochs}: expected at least 1")
    if opts.ensemble is not None and not 1 <= opts.ensemble <= 10:
        from medtune.errors import ConfigError

        raise ConfigError(f"ensemble={opts.ensemble}: expected 1 (one model) to 10 members")
    budget = None
    if opts.budget:
        from medtune.planning.budget import Budget

        budget = Budget(opts.budget).start()
    else:
        fill(opts, dataset_name(opts.dataset), {"epochs": "final_epochs", "image_size": "final_image_size"})
    split_opts = SplitOptions(
        dataset=opts.dataset,
        data_dir=opts.data_dir,
        image_size=opts.image_size or 128,
        seed=opts.seed,
        exclude_classes=tuple(opts.exclude_classes),
    )
    split_opts.check()
    launcher_id = tracking.take_launcher()
    name = dataset_name(opts.dataset)
    run_name = f"main-{name}-{f'{opts.budget / 60:.0f}min' if opts.budget else 'defaults'}-{time.strftime('%m%d-%H%M')}"
    with tracking.pipeline_run(name, run_name=run_name, launcher_id=launcher_id) as pipeline:
        pipeline.params(
            {k: v for k, v in asdict(opts).items() if v not in (None, ()) and k not in ("data_dir", "storage")}
        )
        seconds = {}
        t = time.perf_counter()
        split = run_split(split_opts, reuse_run=True)
        seconds["split"] = time.perf_counter() - t
        _link(launcher_id, pipeline, {"medtune.split_run_id": split.run_id})
        plan_files = {}
        if budget is not None:  # fingerprint the data and the machine, then plan the rest of the budget
            plan_files = _plan(opts, search_opts, split, budget)
            _log_files(pipeline.run_id, plan_files)
        t = time.perf_counter()
        search_opts.split_run = split.run_id
        search = run_search(search_opts)
        _log_files(search.run_id, plan_files)
        seconds["search"] = time.perf_counter() - t
        _link(launcher_id, pipeline, {"medtune.search_run_id": search.run_id})
        if search.best is None:
            from medtune.errors import ConfigError

            raise ConfigError(f"search run {search.run_id}: no trial completed, nothing to train (see its trial runs)")
        if budget is not None and plan_files:
            _replan_final(opts, search, plan_files, budget)
            _log_files(pipeline.run_id, plan_files)  # the plan as final training will follow it
        t = time.perf_counter()
        train = run_train(
            TrainOptions(
                dataset=opts.dataset,
                data_dir=opts.data_dir,
                search_run=search.run_id,
                epochs=opts.epochs,
                image_size=opts.image_size,
                patience=opts.patience,
                mixed_precision=opts.mixed_precision,
                margin=opts.margin,
                seed=opts.seed,
                split_run=split.run_id,
                weights=opts.weights,
                class_weights=opts.class_weights,
                ensemble=opts.ensemble or 1,
                budget=budget.remaining() if budget is not None else None,
                replan=bool(plan_files) and plan_files["plan.json"]["reasons"]["epochs"] != "given",
                tta=opts.tta,
            )
        )
        _log_files(train.run_id, plan_files)
        seconds["train+evaluate"] = time.perf_counter() - t
        _link(
            launcher_id,
            pipeline,
            {
                "medtune.train_run_id": train.run_id,
                "medtune.model_version": train.model_version or "",
                "medtune.decision": train.decision.alias if train.decision else "",
            },
        )
        pipeline.metrics({f"{k.replace('+', '_')}_seconds": v for k, v in seconds.items()})
        pipeline.metrics({k: train.metrics[k] for k in PIPELINE_METRICS if k in train.metrics})
        if budget is not None:
            pipeline.metrics(budget.record())
            log.info("Budget: %.1f of %.1f minutes used", budget.elapsed() / 60, budget.seconds / 60)
    log.info("Pipeline done: %s", ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return PipelineOutcome(split.run_id, search.run_id, train, seconds)


PIPELINE_METRICS = ("test_accuracy", "test_macro_f1", "test_balanced_accuracy", "test_roc_auc_macro", "test_ece")
PLATEAU_MIN_PATIENCE = 6  # finished trials without improvement before a planned search stops early
MAX_BUDGETED_TRIALS = 200  # with a budget and no trial count, the time ends the search


def fingerprints(split):
    """The data's fingerprint from a finished split (its report and a sample of its files), and the machine's."""
    from pathlib import Path

    from medtune.planning.fingerprint import DataFingerprint, MachineFingerprint, image_stats

    manifest = split.result.manifest
    root = Path(split.resolved.root)
    paths = [p if Path(p).is_absolute() else str(root / p) for p in manifest["path"]]
    data = DataFingerprint.from_split(split.result.report, image_stats(paths))
    return data, MachineFingerprint.detect()


def _plan(opts: PipelineOptions, search_opts, split, budget) -> dict:
    """Derive the plan for what is left of ``budget``, apply it to the options, print it; the files to log."""
    from medtune.planning.rules import make_plan, render_plan

    data, machine = fingerprints(split)
    given = {
        "space": opts.space,
        "trials": opts.trials,
        "search_epochs": opts.search_epochs,
        "search_image_size": opts.search_image_size,
        "epochs": opts.epochs,
        "image_size": opts.image_size,
        "ensemble": opts.ensemble,
        "class_weights": opts.class_weights,
    }  # applied as given
    from medtune.hpo.engines import get_engine

    engine = get_engine(opts.engine)
    tpe = bool(engine.optuna_options) and not engine.grid  # queues recipes, prunes at rungs
    plan = make_plan(
        data, machine, budget.remaining(), overrides=given, can_warm_start=tpe and opts.warm_start == "recipes"
    )
    log.info(
        "Plan for %s (%.0f minutes left of the budget; any option you give overrides it):\n%s",
        split.resolved.name,
        budget.remaining() / 60,
        render_plan(plan, data, machine),
    )
    search_opts.space = plan.space
    # the time budget ends the search; a trial count the user gave caps it
    search_opts.trials = opts.trials or MAX_BUDGETED_TRIALS
    search_opts.epochs = plan.search_epochs
    search_opts.rungs = plan.rungs if len(plan.rungs) > 1 else None
    search_opts.image_size = plan.rungs[-1]
    search_opts.budget = plan.search_s
    search_opts.plateau = max(PLATEAU_MIN_PATIENCE, plan.trials // 3)
    if plan.recipe:  # no search: one trial of the recipe, never cut short (its time is the probe)
        search_opts.trials, search_opts.budget, search_opts.plateau = 1, None, 0
        search_opts.warm_start = f"recipe:{plan.recipe}"
    if search_opts.rungs and opts.pruner is None and tpe:
        search_opts.pruner = "median"  # decides at the end of every rung (ASHA's rungs are 1, 3, 9 epochs)
    opts.epochs, opts.image_size, opts.ensemble = plan.epochs, plan.image_size, plan.ensemble
    return {"fingerprint.json": {"data": data.to_dict(), "machine": machine.to_dict()}, "plan.json": plan.to_dict()}


def _replan_final(opts: PipelineOptions, search, plan_files: dict, budget) -> None:
    """Rule 6 again, with what the search measured: the best trial's steady epoch time at the final size."""
    from medtune.planning.rules import plan_final, steady_epoch_seconds

    plan = plan_files["plan.json"]
    if search.best is None or not search.best.run_id:
        return
    seconds = tracking.metric_values(search.best.run_id, "epoch_seconds")
    sizes = tracking.metric_values(search.best.run_id, "image_size")
    if not seconds or not sizes:
        return
    stages = tracking.metric_values(search.best.run_id, "stage")
    steady = steady_epoch_seconds(seconds, sizes, stages)
    measured = max(steady, 1.0) * (plan["image_size"] / sizes[-1]) ** 2 * 1.05  # train's TimeLimit guards the rest
    given = {
        "ensemble": plan["ensemble"] if plan["reasons"]["ensemble"] == "given" else None,
        "epochs": plan["epochs"] if plan["reasons"]["epochs"] == "given" else None,
    }
    ensemble, epochs, why = plan_final(budget.remaining(), measured, given)
    if (ensemble, epochs) != (opts.ensemble, opts.epochs):
        log.info(
            "Final training re-planned from the search's measured epoch time (%.0f s at %d px): %d x %d epochs "
            "(planned %d x %d)",
            measured,
            plan["image_size"],
            ensemble,
            epochs,
            opts.ensemble,
            opts.epochs,
        )
    opts.ensemble, opts.epochs = ensemble, epochs
    plan_files["plan.json"] = {
        **plan,
        "ensemble": ensemble,
        "epochs": epochs,
        "measured_epoch_s": round(measured, 1),
        "reasons": {
            **plan["reasons"],
            **{k: f"{v} (re-planned after the search)" for k, v in why.items() if v != "given"},
        },
    }


def _log_files(run_id: str | None, files: dict) -> None:
    if not run_id or not files:
        return
    logger = tracking.RunLogger(run_id)
    for name, content in files.items():
        logger.json(content, name)


def _link(launcher_id: str | None, pipeline, tags: dict) -> None:
    """Tag the pipeline's run (and the ``mlflow run`` launcher run, if any) with a step's outcome."""
    pipeline.tags(tags)
    tracking.tag_launcher(launcher_id, {"medtune.step": "main", **tags})
