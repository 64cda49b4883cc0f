"""The ``search`` step: a tracked, resumable hyperparameter search with either engine.

One parent run per search (per worker), one nested child run per trial attempt: an interrupted
trial's run ends KILLED and keeps its history; its retry (a new Optuna trial, or keras-tuner's
same trial number with ``medtune.attempt`` 2) gets a run of its own.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field

from medtune import settings, tracking
from medtune.errors import ConfigError
from medtune.hpo.base import (
    COMPLETE,
    PRUNED,
    PRUNERS,
    SearchSettings,
    TrialSummary,
    best_trial,
)
from medtune.hpo.engines import get_engine
from medtune.hpo.trial import TrialData, objective_direction, probe_indices
from medtune.options import default
from medtune.planning.budget import Budget
from medtune.tracking.search_recorder import SearchRecorder, log_search, trial_run_ids

log = logging.getLogger(__name__)
progress_log = logging.getLogger("medtune.progress")


@dataclass
class SearchOptions:
    dataset: str = default("dataset")
    data_dir: str | None = default("data_dir")
    engine: str = default("engine")
    space: str | None = default("space")
    trials: int | None = default("trials")
    epochs: int | None = default("search.epochs")
    image_size: int | None = default("search.image_size")
    objective: str = default("objective")
    timeout: float | None = default("timeout")
    study: str | None = default("study")
    storage: str | None = default("storage")
    seed: int = default("seed")
    class_weights: bool | None = default("class_weights")
    pruner: str | None = default("pruner")
    split_run: str | None = default("split_run")
    weights: str = default("search.weights")
    budget: float | None = default("budget")
    rungs: tuple[int, ...] | None = default("image_sizes")
    warm_start: str = default("warm_start")
    plateau: int = default("plateau")


@dataclass
class SearchOutcome:
    run_id: str
    study: str
    summaries: list[TrialSummary]
    best: TrialSummary | None
    seconds: float
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the step


def default_study(opts: SearchOptions, space_stem: str, manifest_hash: str) -> str:
    engine = get_engine(opts.engine).study_label
    sizes = "-".join(map(str, opts.rungs)) if opts.rungs and len(opts.rungs) > 1 else str(opts.image_size)
    return f"{opts.dataset}-{space_stem}-{engine}-{sizes}px-{manifest_hash[:8]}"


def check_options(opts: SearchOptions) -> None:
    """Check what is set (options left to the plan are None) and name the engine's canonical spelling."""
    engine = get_engine(opts.engine)
    opts.engine = engine.name
    if opts.timeout:  # the older name of the search's time budget
        if opts.budget and opts.budget != opts.timeout:
            raise ConfigError(
                f"timeout={opts.timeout:g} and budget={opts.budget:g}: give one (timeout is budget's old name)"
            )
        opts.budget, opts.timeout = opts.timeout, None
    if not engine.optuna_options:  # keras-tuner has no pruner or Optuna storage
        given = [
            f"{k}={v}" for k, v in (("pruner", opts.pruner), ("storage", opts.storage)) if v not in (None, "", "none")
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only the optuna engine takes this; engine={opts.engine} "
                "(keras-tuner) would ignore it"
            )
    if opts.trials is not None and opts.trials < 1:
        raise ConfigError(f"trials={opts.trials}: expected at least 1")
    if opts.epochs is not None and opts.epochs < 1:
        raise ConfigError(f"epochs={opts.epochs}: expected at least 1")
    if opts.image_size is not None and not 16 <= opts.image_size <= 1024:
        raise ConfigError(f"image_size={opts.image_size}: expected 16..1024 pixels")
    if opts.rungs:
        if any(not 16 <= r <= 1024 for r in opts.rungs) or list(opts.rungs) != sorted(set(opts.rungs)):
            raise ConfigError(f"image_sizes={','.join(map(str, opts.rungs))}: expected increasing sizes of 16..1024 px")
        opts.image_size = opts.rungs[-1]  # the split is loaded at the largest rung and resized down
    if opts.budget is not None and opts.budget <= 0:
        raise ConfigError(f"budget={opts.budget}: expected a positive duration")
    if opts.plateau < 0:
        raise ConfigError(f"plateau={opts.plateau}: expected 0 (never) or a number of trials")
    if opts.warm_start in ("", None):
        opts.warm_start = "none"
    if opts.pruner is not None and opts.pruner not in PRUNERS:
        raise ConfigError(f"pruner={opts.pruner!r}: expected one of {', '.join(PRUNERS)}")
    objective_direction(opts.objective)
    if opts.space is not None:  # a bad space file stops here, before the split and any run
        from medtune.space import load_space, resolve_space_path

        load_space(resolve_space_path(opts.space))
    if opts.storage:
        from medtune.hpo.optuna_engine import check_driver

        check_driver(opts.storage)


@dataclass
class _Prepared:
    """What a search needs, checked: the space, its split and the engine's settings."""

    space: object  # medtune.space.SearchSpace
    space_path: object  # pathlib.Path
    split: object  # medtune.tracking.splits.LoadedSplit
    data: TrialData
    cfg: SearchSettings
    backbones: list[str]


def run_search(opts: SearchOptions, budget: Budget | None = None) -> SearchOutcome:
    """Validate everything, load the split cache, then search with the chosen engine.

    ``budget``: the search's share of a larger budget (``main``); without it, ``opts.budget``
    seconds from now. Options left unset come from the plan without a budget (``main`` applies
    its own plan first).
    """
    if budget is None and opts.budget:
        budget = Budget(opts.budget).start()
    ready = _prepare(opts, budget)
    engine, cfg, split = get_engine(opts.engine), ready.cfg, ready.split
    from medtune.training import configure_threads  # imports TensorFlow: only once the inputs are valid

    # unreadable keras-tuner state, or a study that searched other categorical choices, stops here
    engine.check_state(ready.space, cfg)
    configure_threads()
    experiment_id = tracking.ensure_experiment(split.dataset)
    resume = (
        f"tags.`{tracking.TAG_STEP}` = 'search' and tags.`medtune.study` = '{cfg.study}' "
        f"and tags.`{tracking.TAG_HOST}` = '{socket.gethostname()}'"
    )
    t0 = time.perf_counter()
    with tracking.step_run(
        split.dataset,
        "search",
        run_name=f"search-{cfg.study}",
        resume_filter=resume,
        tags={
            "medtune.study": cfg.study,
            "medtune.engine": opts.engine,
            "medtune.split_run_id": split.run_id,
            "medtune.objective": opts.objective,
            "medtune.direction": cfg.direction,
        },
    ) as parent:
        _record_inputs(parent, opts, ready, budget)
        recorder = SearchRecorder(parent, experiment_id, opts, cfg.study, split.classes, cfg.weights, budget=budget)
        summaries = engine.run(ready.space, ready.data, cfg, recorder)
        summaries = trial_run_ids(summaries, parent, experiment_id, cfg.study)
        best = best_trial(summaries, cfg.direction)
        if best is None and budget is not None:
            best = _best_stopped(summaries, cfg.direction)
            if best is not None:  # the budget ended every trial early: the best one stopped by it
                log.warning(
                    "No trial completed within the time budget: trial %d, stopped by the budget at "
                    "%s=%.4f, is taken as the best",
                    best.number,
                    opts.objective,
                    best.value,
                )
                parent.tags({"medtune.best_is_partial": "true"})
        seconds = time.perf_counter() - t0
        if budget is not None:
            parent.metrics(budget.record())
        log_search(parent, summaries, best, ready.space, opts, cfg.direction, seconds)
        return SearchOutcome(parent.run_id, cfg.study, summaries, best, seconds)


def _prepare(opts: SearchOptions, budget: Budget | None) -> _Prepared:
    """Check the options, fill what is unset from the plan, load the space, the weights and the split."""
    from medtune.datasets.cache import manifest_hash
    from medtune.datasets.registry import dataset_name
    from medtune.models import backbones_of, check_image_size
    from medtune.models.weights import resolve_weights
    from medtune.planning.fingerprint import MachineFingerprint
    from medtune.planning.rules import MAX_BUDGETED_TRIALS, apply, default_plan
    from medtune.space import load_space, resolve_space_path
    from medtune.tracking.splits import load_split

    check_options(opts)
    engine = get_engine(opts.engine)
    if budget is not None and opts.trials is None and not engine.grid:
        opts.trials = MAX_BUDGETED_TRIALS  # the time budget decides how many run
    if engine.grid and opts.trials is None:
        opts.trials = 0  # the grid's size, below
    if not engine.optuna_options:
        opts.pruner = opts.pruner or "none"
    set_now = apply(default_plan(MachineFingerprint.detect(), dataset_name(opts.dataset)), opts)
    if set_now:
        log.info("Defaults for this machine: %s", ", ".join(f"{f}={getattr(opts, f)}" for f in set_now))
    opts.weights = opts.weights or "none"
    space_path = resolve_space_path(opts.space)
    space = load_space(space_path)  # a bad space file stops here, before any trial
    grid = None
    if engine.grid:  # a continuous parameter without a step stops here, in one line
        from medtune.hpo.grid import describe, grid_size, grid_values

        grid = grid_values(space)
        opts.trials = min(opts.trials or grid_size(grid), grid_size(grid))
        log.info("Grid of %s: %s; %d trials", space_path.name, describe(grid), opts.trials)
    check_options(opts)
    backbones = backbones_of(space)
    check_image_size(backbones, opts.image_size)
    weights = resolve_weights(opts.weights, backbones)  # no network or a bad file: one line, now
    split = load_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    opts.dataset = split.dataset
    cache = split.cache
    data = TrialData(
        classes=split.classes,
        x_train=cache.x["train"],
        y_train=cache.y["train"],
        x_val=cache.x["val"],
        y_val=cache.y["val"],
        probe_index=probe_indices(cache.y["val"], len(split.classes), per_class=2, seed=opts.seed),
    )
    cfg = SearchSettings(
        study=opts.study or default_study(opts, space_path.stem, manifest_hash(split.manifest)),
        trials=opts.trials,
        epochs=opts.epochs,
        objective=opts.objective,
        direction=objective_direction(opts.objective),
        seed=opts.seed,
        class_weights=opts.class_weights,
        storage=opts.storage,
        pruner=opts.pruner or "none",
        workdir=str(settings.project_dir() / ".medtune" / "keras_tuner"),
        weights=weights,
        grid=grid,
        rungs=tuple(opts.rungs) if opts.rungs and len(opts.rungs) > 1 else None,
        warm_start=opts.warm_start,
        plateau_patience=opts.plateau,
        split=manifest_hash(split.manifest),
        budget=budget,
    )
    return _Prepared(space, space_path, split, data, cfg, backbones)


def _record_inputs(parent, opts: SearchOptions, ready: _Prepared, budget: Budget | None) -> None:
    """The search's options, space, weights and training manifest on its run; the line that starts it."""
    cfg, split = ready.cfg, ready.split
    sizes = ",".join(map(str, cfg.rungs)) if cfg.rungs else opts.image_size
    parent.params(
        {
            "dataset": split.dataset,
            "engine": opts.engine,
            "space": ready.space_path.name,
            "trials": opts.trials,
            "epochs": opts.epochs,
            "image_size": opts.image_size,
            "objective": opts.objective,
            "study": cfg.study,
            "seed": opts.seed,
            "class_weights": opts.class_weights,
            "pruner": opts.pruner if get_engine(opts.engine).optuna_options else "none",
            "storage": _storage_label(opts.storage),
            "weights": opts.weights if ready.backbones != ["custom"] else "n/a",
            "budget_min": round(budget.seconds / 60, 2) if budget and budget.seconds else "none",
            "image_sizes": sizes,
            "warm_start": opts.warm_start,
            "plateau": opts.plateau,
        }
    )
    if cfg.weights:
        parent.json({name: w.tags() for name, w in cfg.weights.items()}, "weights.json")
    parent.file(ready.space_path)
    tracking.log_manifest(split.manifest, split.root, split.dataset, "training")
    log.info(
        "Search %s: %s engine, %s trials x %d epochs at %s px, objective %s%s",
        cfg.study,
        opts.engine,
        "up to " + str(opts.trials) if budget else opts.trials,
        opts.epochs,
        sizes.replace(",", "/") if isinstance(sizes, str) else sizes,
        opts.objective,
        f", budget {budget.seconds / 60:.1f} min" if budget and budget.seconds else "",
    )


def _best_stopped(summaries: list[TrialSummary], direction: str) -> TrialSummary | None:
    """Among PRUNED trials, the best by its last reported value (a stand-in when none completed)."""
    from dataclasses import replace

    candidates = [
        replace(s, value=s.intermediate[max(s.intermediate)], state=COMPLETE)
        for s in summaries
        if s.state == PRUNED and s.intermediate
    ]
    return best_trial(candidates, direction)


def _storage_label(storage: str | None) -> str:
    from medtune.hpo.optuna_engine import _redact

    return _redact(storage) if storage else "default"
