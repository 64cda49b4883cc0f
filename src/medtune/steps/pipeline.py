"""``main``: split, search, train (with evaluation and promotion), each step its own run."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

from medtune import tracking
from medtune.options import default
from medtune.planning.fingerprint import DataFingerprint, MachineFingerprint
from medtune.planning.rules import Plan, default_plan, make_plan, render_plan, replan_final, with_given

log = logging.getLogger(__name__)


@dataclass
class PipelineOptions:
    dataset: str = default("dataset")
    data_dir: str | None = default("data_dir")
    engine: str = default("engine")
    space: str | None = default("space")
    trials: int | None = default("trials")
    search_epochs: int | None = default("search.epochs")
    search_image_size: int | None = default("search.image_size")
    epochs: int | None = default("train.epochs")
    image_size: int | None = default("train.image_size")
    objective: str = default("objective")
    pruner: str | None = default("pruner")
    class_weights: bool | None = default("class_weights")
    timeout: float | None = default("timeout")
    study: str | None = default("study")
    storage: str | None = default("storage")
    patience: int | None = default("patience")
    margin: float = default("margin")
    mixed_precision: bool = default("mixed_precision")
    weights: str = default("search.weights")
    seed: int = default("seed")
    budget: float | None = default("budget")
    ensemble: int | None = default("ensemble")
    folds: int | None = default("folds")
    warm_start: str = default("warm_start")
    tta: str = default("tta")
    calibrate: bool = default("calibrate")
    conformal_level: float = default("conformal_level")
    card_images: bool = default("card_images")
    exclude_classes: tuple[str, ...] = default("exclude_classes")
    window: str | None = default("window")
    labels: str | None = default("labels")


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
    """Split (reusing a finished split of the same files), plan, search, train with evaluation and the gate.

    One plan decides every value the user left unset (:mod:`medtune.planning.rules`): from the
    fingerprints of the split and the machine when there is a budget, the machine-sized defaults
    otherwise. It is printed, logged as ``plan.json`` and applied as printed. One :class:`Budget`
    is handed down: the search gets its share, final training the rest.

    The pipeline has its own run in ``medtune-<dataset>``, the parent of its step runs, with the
    plan, the budget used and the test metrics; under ``mlflow run -e main`` the launcher run is
    linked to it and tagged with the step run ids.
    """
    from medtune.datasets.registry import dataset_name
    from medtune.planning.budget import Budget
    from medtune.steps.search import SearchOptions, check_options, run_search
    from medtune.steps.split import SplitOptions, run_split
    from medtune.steps.train import run_train

    search_opts = SearchOptions(**{k: getattr(opts, k) for k in SEARCH_FIELDS})
    check_options(search_opts)  # every option is checked before the first step starts
    _check(opts)
    budget = Budget(opts.budget).start() if opts.budget else None
    name = dataset_name(opts.dataset)
    machine = MachineFingerprint.detect()
    plan = None if budget else with_given(default_plan(machine, name), _given(opts))
    split_opts = SplitOptions(
        dataset=opts.dataset,
        data_dir=opts.data_dir,
        image_size=opts.image_size or (plan.final_image_size if plan else default("split.image_size")),
        seed=opts.seed,
        exclude_classes=tuple(opts.exclude_classes),
        window=opts.window,
        labels=opts.labels,
    )
    split_opts.check()
    launcher_id = tracking.take_launcher()
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
        plan, files = _plan(opts, name, machine, split, budget, plan)
        _log_files(pipeline.run_id, files)
        t = time.perf_counter()
        search_opts.split_run = split.run_id
        _search_options(search_opts, plan)
        search = run_search(search_opts, budget=budget.share(plan.search_s) if budget and not plan.recipe else None)
        _log_files(search.run_id, files)
        seconds["search"] = time.perf_counter() - t
        _link(launcher_id, pipeline, {"medtune.search_run_id": search.run_id})
        if search.best is None:
            from medtune.errors import ConfigError

            raise ConfigError(f"search run {search.run_id}: no trial completed, nothing to train (see its trial runs)")
        if budget is not None:
            plan = _replan_final(plan, search, budget)
            files["plan.json"] = plan.to_dict()
            _log_files(pipeline.run_id, files)  # the plan as final training will follow it
        t = time.perf_counter()
        train = run_train(
            _train_options(opts, plan, split.run_id, search.run_id, budget is not None),
            budget=budget.share() if budget is not None else None,
        )
        _log_files(train.run_id, files)
        seconds["train+evaluate"] = time.perf_counter() - t
        _record_outcome(launcher_id, pipeline, train, seconds, budget)
    log.info("Pipeline done: %s", ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return PipelineOutcome(split.run_id, search.run_id, train, seconds)


PIPELINE_METRICS = ("test_accuracy", "test_macro_f1", "test_balanced_accuracy", "test_roc_auc_macro", "test_ece")
# the search's own options, as main was given them (the plan sets the rest)
SEARCH_FIELDS = (
    "dataset",
    "data_dir",
    "engine",
    "objective",
    "pruner",
    "timeout",
    "study",
    "storage",
    "seed",
    "weights",
    "warm_start",
)


def _record_outcome(launcher_id, pipeline, train, seconds: dict, budget) -> None:
    """The final model, the test figures, each step's seconds and the budget used, on the pipeline's run."""
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


def _plan(opts: PipelineOptions, name: str, machine, split, budget, plan: Plan | None) -> tuple[Plan, dict]:
    """The plan (with a budget: from the fingerprints, for what is left of it), fitted to the engine
    and printed; the files that record it."""
    fingerprint, data = {"machine": machine.to_dict()}, None
    if budget is not None:  # fingerprint the data, then plan what is left of the budget
        data = data_fingerprint(split)
        fingerprint["data"] = data.to_dict()
        plan = make_plan(data, machine, budget.remaining(), _given(opts), can_warm_start=_warm_starts(opts))
    _fit_to_engine(plan, opts.engine)
    log.info(
        "Plan for %s (%s; any option you give overrides it):\n%s",
        name,
        f"{budget.remaining() / 60:.0f} minutes left of the budget" if budget else "no budget",
        render_plan(plan, data, machine),
    )
    return plan, {"fingerprint.json": fingerprint, "plan.json": plan.to_dict()}


def _train_options(opts: PipelineOptions, plan: Plan, split_run: str, search_run: str, budgeted: bool):
    """Final training's options: the plan's values and the user's own."""
    from medtune.steps.train import TrainOptions

    return TrainOptions(
        dataset=opts.dataset,
        data_dir=opts.data_dir,
        search_run=search_run,
        epochs=plan.final_epochs,
        image_size=plan.final_image_size,
        patience=opts.patience,
        mixed_precision=opts.mixed_precision,
        margin=opts.margin,
        seed=opts.seed,
        split_run=split_run,
        weights=opts.weights,
        class_weights=plan.class_weights,
        ensemble=plan.ensemble,
        folds=plan.folds,
        replan=budgeted and plan.reasons["final_epochs"] != "given",
        tta=opts.tta,
        calibrate=opts.calibrate,
        conformal_level=opts.conformal_level,
        card_images=opts.card_images,
    )


def _check(opts: PipelineOptions) -> None:
    from medtune.calibration import check_level
    from medtune.errors import ConfigError

    check_level(opts.conformal_level)  # before the split and the search, not at final training
    if opts.epochs is not None and opts.epochs < 1:
        raise ConfigError(f"epochs={opts.epochs}: expected at least 1")
    if opts.ensemble is not None and not 1 <= opts.ensemble <= 10:
        raise ConfigError(f"ensemble={opts.ensemble}: expected 1 (one model) to 10 members")
    if opts.folds is not None and not (opts.folds == 0 or 2 <= opts.folds <= 10):
        raise ConfigError(f"folds={opts.folds}: expected 0 (the validation split) or 2 to 10 folds")


def _given(opts: PipelineOptions) -> dict:
    """The user's own values, by plan field name (None: left to the plan)."""
    return {
        "space": opts.space,
        "trials": opts.trials,
        "search_epochs": opts.search_epochs,
        "search_image_sizes": (opts.search_image_size,) if opts.search_image_size else None,
        "final_epochs": opts.epochs,
        "final_image_size": opts.image_size,
        "ensemble": opts.ensemble,
        "folds": opts.folds,
        "class_weights": opts.class_weights,
        "pruner": opts.pruner,
    }


def _warm_starts(opts: PipelineOptions) -> bool:
    """Whether the engine queues recipes and prunes at rungs (Optuna's TPE), so rule 1 may skip the search."""
    from medtune.hpo.engines import get_engine

    engine = get_engine(opts.engine)
    return bool(engine.optuna_options) and not engine.grid and opts.warm_start == "recipes"


def _fit_to_engine(plan: Plan, engine_name: str) -> None:
    """keras-tuner engines have no pruner: the plan says so rather than print one that does not run."""
    from medtune.hpo.engines import get_engine

    engine = get_engine(engine_name)
    if not engine.optuna_options and plan.pruner not in (None, "none"):
        plan.pruner, plan.reasons["pruner"] = None, f"engine {engine.name} has no pruner"


def _search_options(search_opts, plan: Plan) -> None:
    """The plan's search values on the search step's options."""
    search_opts.space = plan.space
    search_opts.trials = plan.trials
    search_opts.epochs = plan.search_epochs
    search_opts.image_size = plan.search_image_sizes[-1]
    search_opts.rungs = plan.search_image_sizes if len(plan.search_image_sizes) > 1 else None
    search_opts.pruner = plan.pruner or "none"
    search_opts.plateau = plan.plateau
    search_opts.class_weights = plan.class_weights
    if plan.budget_s:  # main hands the search its share of the one budget
        search_opts.timeout = search_opts.budget = None
    if plan.recipe:  # no search: one trial of the recipe, never cut short (its time is the probe)
        search_opts.warm_start = f"recipe:{plan.recipe}"


def data_fingerprint(split) -> DataFingerprint:
    """The data's fingerprint from a finished split (its report and a sample of its files)."""
    from pathlib import Path

    from medtune.planning.fingerprint import image_stats

    manifest = split.result.manifest
    root = Path(split.resolved.root)
    paths = [p if Path(p).is_absolute() else str(root / p) for p in manifest["path"]]
    return DataFingerprint.from_split(split.result.report, image_stats(paths))


def _replan_final(plan: Plan, search, budget) -> Plan:
    """Rule 6 again, with what the search measured: the best trial's steady epoch time at the final size."""
    if not search.best.run_id:
        return plan
    seconds = tracking.metric_values(search.best.run_id, "epoch_seconds")
    sizes = tracking.metric_values(search.best.run_id, "image_size")
    if not seconds or not sizes:
        return plan
    stages = tracking.metric_values(search.best.run_id, "stage")
    new, measured = replan_final(plan, seconds, sizes, stages, budget.remaining())
    if (new.ensemble, new.final_epochs) != (plan.ensemble, plan.final_epochs):
        log.info(
            "Final training re-planned from the search's measured epoch time (%.0f s at %d px): %d x %d epochs "
            "(planned %d x %d)",
            measured,
            plan.final_image_size,
            new.ensemble,
            new.final_epochs,
            plan.ensemble,
            plan.final_epochs,
        )
    return new


def ensure_split(
    dataset: str, image_size: int | None = None, *, split_run: str | None = None, data_dir: str | None = None
) -> None:
    """Run the split step for ``dataset`` when it has no finished split (and no ``split_run`` was named).

    ``search``, ``train`` and ``evaluate`` read a split; a user who starts one of them on a dataset
    never split before expects it to work, so the CLI and the Python API call this first. The
    steps themselves only read (:func:`medtune.tracking.splits.load_split`).
    """
    from medtune.datasets.registry import resolve_dataset
    from medtune.steps.split import SplitOptions, run_split

    if split_run not in (None, "", "latest"):
        return
    name = resolve_dataset(dataset, data_dir).name
    if tracking.find_runs(name, "split", max_results=1):
        return
    log.info("No split of %s yet: running the split step first", name)
    with tracking.launcher_set_aside():  # the `mlflow run` run belongs to the step the user asked for
        options = SplitOptions(dataset=dataset, data_dir=data_dir)
        options.image_size = image_size or options.image_size
        run_split(options, reuse_run=True)


def search_with_split(opts):
    """``search`` as the CLI and the API run it: its options checked, the split made when there is
    none, then the search."""
    from medtune.steps.search import check_options, run_search

    check_options(opts)
    ensure_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    return run_search(opts)


def train_with_split(opts):
    """``train`` as the CLI and the API run it: its inputs checked, the split made when there is none,
    then final training."""
    from medtune.steps.train import check_inputs, run_train

    check_inputs(opts)
    ensure_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    return run_train(opts)


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
