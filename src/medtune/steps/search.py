"""The ``search`` step: a tracked, resumable hyperparameter search with either engine.

One parent run per search (per worker), one nested child run per trial. Trial runs are keyed by
(study, trial number), so a resumed search reuses the run of an interrupted trial instead of
duplicating it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtune import settings, tracking
from medtune.errors import ConfigError
from medtune.progress import finite, fmt, short_params
from medtune.search.base import (
    COMPLETE,
    FAILED,
    PRUNED,
    PRUNERS,
    SearchSettings,
    TrialSummary,
    best_trial,
)
from medtune.search.engines import get_engine
from medtune.search.trial import TrialData, objective_direction, probe_indices

log = logging.getLogger(__name__)
progress_log = logging.getLogger("medtune.progress")


@dataclass
class SearchOptions:
    dataset: str = "synthetic"
    data_dir: str | None = None
    engine: str = "optuna"
    space: str | None = None  # None (auto): sized from the machine, see medtune.plan
    trials: int | None = None  # auto
    epochs: int | None = None  # auto
    image_size: int | None = None  # auto
    objective: str = "val_macro_f1"
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    seed: int = 42
    class_weights: bool = True
    pruner: str | None = None  # auto; Optuna only
    split_run: str | None = None
    weights: str = "imagenet"  # for keras.applications backbones: imagenet | none | file | folder
    budget: float | None = None  # seconds of wall clock for the whole search (None: no time limit)
    rungs: tuple[int, ...] | None = None  # image sizes of the resolution rungs (None: image_size only)
    warm_start: str = "recipes"  # recipes | auto | none | earlier study names (Optuna)
    plateau: int = 0  # stop after this many finished trials without improvement (0: never)


@dataclass
class SearchOutcome:
    run_id: str
    study: str
    summaries: list[TrialSummary]
    best: TrialSummary | None
    seconds: float
    extra: dict = field(default_factory=dict)


class MlflowRecorder:
    """Records each trial as a nested MLflow run and prints progress to the console."""

    def __init__(
        self,
        parent: tracking.RunLogger,
        experiment_id: str,
        opts: SearchOptions,
        study: str,
        data: TrialData,
        classes: list[str],
        weights: dict | None = None,
    ):
        self.parent, self.experiment_id, self.opts, self.study = parent, experiment_id, opts, study
        self.data, self.classes, self.weights = data, classes, weights or {}
        self.best: float | None = None
        self.done = 0  # trials COMPLETE or PRUNED in the study (all sessions and workers)
        self.direction = objective_direction(opts.objective)
        self.bar = None  # trials left in this session: a bar on a terminal, an ETA in each line
        self.budget = None  # the search's time budget (a medtune.planning.Budget), when it has one

    # -- engine callbacks
    def trial_started(self, number: int, params: dict):
        client = self.parent.client
        existing = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`medtune.study` = '{self.study}' and tags.`medtune.trial` = '{number}'",
            max_results=5,
        )
        reusable = [r for r in existing if r.info.status != "FINISHED"]
        tags = {
            "mlflow.parentRunId": self.parent.run_id,
            tracking.TAG_STEP: "trial",
            tracking.TAG_DATASET: self.opts.dataset,
            "medtune.study": self.study,
            "medtune.trial": str(number),
            "medtune.engine": self.opts.engine,
            **tracking.process_tags(),
        }
        if reusable:
            run_id = reusable[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            logger = tracking.RunLogger(run_id, client)
            logger.tags(tags)
            log.info("Trial %d resumes its MLflow run %s", number, run_id)
        else:
            run = client.create_run(self.experiment_id, run_name=f"trial-{number:03d}", tags=tags)
            logger = tracking.RunLogger(run.info.run_id, client)
        logger.params(params)
        backbone = params.get("backbone", "custom")
        if backbone != "custom":  # what the trial's backbone was initialised from
            source = self.weights.get(backbone)
            logger.tags(
                {
                    "medtune.weights_source": source.source if source else "none",
                    "medtune.weights_sha256": source.sha256 if source else "",
                }
            )
        handle = _Handle(logger, number, time.perf_counter(), params)
        if self.bar is None:
            from medtune.progress import Counter

            left = max(self.opts.trials - self.done, 1) if get_engine(self.opts.engine).counts_trials else 0
            self.bar = Counter("trials", left, "trial", lines=False)
        # the number is Optuna's and the run's (trial-007 is "trial 7"), counted from 0
        progress_log.info(
            "trial %d started (%s, best %s): %s", number, self._done(), fmt(self.best), short_params(params)
        )
        return handle

    def epoch_end(self, handle, epoch: int, logs: dict) -> None:
        metrics = {tracking.metric_name(k): float(v) for k, v in logs.items() if finite(v)}
        handle.logger.metrics(metrics, step=epoch)  # one small batch per epoch; async costs ~1.5 s per trial to drain
        value = logs.get(self.opts.objective)
        best = self.best
        progress_log.info(
            "trial %d epoch %d/%d%s %s=%s (best so far %s)",
            handle.number,
            epoch + 1,
            self.opts.epochs,
            f" at {int(logs['image_size'])} px" if self.opts.rungs and finite(logs.get("image_size")) else "",
            self.opts.objective,
            fmt(value),
            fmt(best),
        )

    def trial_finished(
        self, handle, state: str, result=None, error: BaseException | None = None, reason: str | None = None
    ) -> None:
        logger = handle.logger
        seconds = time.perf_counter() - handle.t0
        interrupted = isinstance(error, KeyboardInterrupt)
        try:
            logger.metrics({"trial_seconds": seconds})
            tags = {"medtune.trial_state": "KILLED" if interrupted else state}
            if reason:
                tags["medtune.stop_reason"] = reason
            if error is not None:
                tags[tracking.TAG_ERROR] = tracking.one_line(error)
            if result is not None and result.history:
                tags["medtune.epochs_run"] = result.epochs_run
                if state == COMPLETE:
                    logger.metrics({f"best_{self.opts.objective}": result.value, "best_epoch": result.best_epoch})
            logger.tags(tags)
            if result is not None and result.model is not None and not interrupted and result.history:
                self._artifacts(logger, result)
        except Exception as exc:  # tracking trouble must not turn a good trial into a failed one
            log.warning("trial %d: could not log everything: %s", handle.number, exc)
        finally:
            status = "KILLED" if interrupted else ("FAILED" if state == FAILED else "FINISHED")
            logger.end(status)
        if state == COMPLETE and result is not None and finite(result.value):
            better = self.best is None or (
                result.value > self.best if self.direction == "maximize" else result.value < self.best
            )
            if better:
                self.best = result.value
        if state in (COMPLETE, PRUNED):
            self.done += 1
            self.bar.update(1, postfix=f"best {fmt(self.best)}")
        progress_log.info(
            "trial %d %s in %.0f s: %s=%s (best %s; %s%s)%s",
            handle.number,
            "KILLED" if interrupted else (f"{state} ({reason})" if reason and reason != "pruned" else state),
            seconds,
            self.opts.objective,
            fmt(result.value if result is not None else None),
            fmt(self.best),
            self._done(),
            f", {self.bar.eta()}"
            if 0 < self.bar.done < self.bar.total and getattr(self, "budget", None) is None
            else "",
            f": {tracking.one_line(error)}" if error is not None and not interrupted else "",
        )

    def progress(self, summaries: list[TrialSummary]) -> None:
        done = [s for s in summaries if s.state in (COMPLETE, PRUNED)]
        best = best_trial(summaries, self.direction)
        metrics = {"trials_done": len(done), "trials_failed": sum(s.state == FAILED for s in summaries)}
        self.done = len(done)
        if best is not None:
            metrics["best_so_far"] = best.value
            self.best = best.value
        self.parent.metrics(metrics, step=len(summaries))

    def search_stopped(self, reason: str) -> None:
        self.stop_reason = reason
        self.parent.tags({"medtune.stop_reason": reason})

    def _done(self) -> str:
        budget = getattr(self, "budget", None)
        if budget is not None and budget.seconds is not None:  # the time, not the trial count, ends it
            return f"{self.done} done, {budget.remaining() / 60:.1f} min of the search's budget left"
        if not get_engine(self.opts.engine).counts_trials:  # Hyperband's brackets, not `trials`, set its budget
            return f"{self.done} done"
        return f"{self.done} of {self.opts.trials} done"

    # -- per-trial artifacts, made once at the end of the trial
    def _artifacts(self, logger: tracking.RunLogger, result) -> None:
        from medtune import explain, metrics, reports

        logger.figure(reports.learning_curves(result.history), "learning_curves.png")
        if result.val_proba is not None:
            cm = metrics.confusion(self.data.y_val, result.val_proba.argmax(1), len(self.classes))
            logger.figure(reports.confusion_matrix_figure(cm, self.classes, title="validation"), "confusion_matrix.png")
        probe = self.data.probe_index
        if len(probe):
            images = np.asarray(self.data.at(int(result.model.input_shape[1])).x_val[probe])  # the last rung's size
            heatmaps, proba = explain.gradcam(result.model, images)
            titles = [
                f"{self.classes[int(t)]} -> {self.classes[int(p.argmax())]} {p.max():.2f}"
                for t, p in zip(self.data.y_val[probe], proba)
            ]
            logger.figure(reports.gradcam_grid(images, heatmaps, titles), "gradcam.png")


@dataclass
class _Handle:
    logger: tracking.RunLogger
    number: int
    t0: float
    params: dict

    @property
    def run_id(self) -> str:
        return self.logger.run_id


# ---------------------------------------------------------------- the step


MAX_BUDGETED_TRIALS = 200  # with a time budget and no trial count, the budget ends the search
PLANNED = {"space": "space", "trials": "trials", "epochs": "epochs", "image_size": "image_size"}


def default_study(opts: SearchOptions, space_stem: str, manifest_hash: str) -> str:
    engine = get_engine(opts.engine).study_label
    sizes = "-".join(map(str, opts.rungs)) if opts.rungs and len(opts.rungs) > 1 else str(opts.image_size)
    return f"{opts.dataset}-{space_stem}-{engine}-{sizes}px-{manifest_hash[:8]}"


def check_options(opts: SearchOptions) -> None:
    """Check what is set (options left to the plan are None) and name the engine's canonical spelling."""
    engine = get_engine(opts.engine)
    opts.engine = engine.name
    if not engine.optuna_options:  # keras-tuner has no pruner, Optuna storage or time limit
        given = [
            f"{k}={v}"
            for k, v in (("pruner", opts.pruner), ("storage", opts.storage), ("timeout", opts.timeout))
            if v not in (None, "", 0, "none")
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
    if opts.storage:
        from medtune.search.optuna_engine import check_driver

        check_driver(opts.storage)


def run_search(opts: SearchOptions) -> SearchOutcome:
    """Validate everything, load the split cache, then search with the chosen engine."""
    from medtune.datasets.cache import manifest_hash
    from medtune.datasets.registry import dataset_name
    from medtune.plan import fill
    from medtune.space import load_space, resolve_space_path
    from medtune.steps.data import load_split
    from medtune.steps.prerequisites import ensure_split

    check_options(opts)
    engine = get_engine(opts.engine)
    if opts.budget and opts.trials is None and not engine.grid:
        opts.trials = MAX_BUDGETED_TRIALS  # the time budget decides how many run
    fill(
        opts,
        dataset_name(opts.dataset),
        {
            **PLANNED,
            **({"pruner": "pruner"} if engine.optuna_options else {}),
            **({"trials": "trials"} if not engine.grid else {}),
        },
    )
    opts.weights = opts.weights or "none"
    space_path = resolve_space_path(opts.space)
    space = load_space(space_path)  # a bad space file stops here, before any trial
    grid = None
    if engine.grid:  # a continuous parameter without a step stops here, in one line
        from medtune.search.grid import describe, grid_size, grid_values

        grid = grid_values(space)
        opts.trials = min(opts.trials or grid_size(grid), grid_size(grid))
        log.info("Grid of %s: %s; %d trials", space_path.name, describe(grid), opts.trials)
    check_options(opts)
    from medtune.models import backbones_of, check_image_size
    from medtune.models.weights import resolve_weights

    backbones = backbones_of(space)
    check_image_size(backbones, opts.image_size)
    weights = resolve_weights(opts.weights, backbones)  # no network or a bad file: one line, now
    ensure_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    split = load_split(opts.dataset, opts.image_size, split_run=opts.split_run, data_dir=opts.data_dir)
    from medtune.training import configure_threads  # imports TensorFlow: only once the inputs are valid

    opts.dataset = split.dataset
    study = opts.study or default_study(opts, space_path.stem, manifest_hash(split.manifest))
    direction = objective_direction(opts.objective)
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
        study=study,
        trials=opts.trials,
        epochs=opts.epochs,
        objective=opts.objective,
        direction=direction,
        timeout=opts.timeout,
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
    )
    # unreadable keras-tuner state, or a study that searched other categorical choices, stops here
    engine.check_state(space, cfg)
    configure_threads()
    experiment_id = tracking.ensure_experiment(split.dataset)
    resume = (
        f"tags.`{tracking.TAG_STEP}` = 'search' and tags.`medtune.study` = '{study}' "
        f"and tags.`{tracking.TAG_HOST}` = '{socket.gethostname()}'"
    )
    t0 = time.perf_counter()
    with tracking.step_run(
        split.dataset,
        "search",
        run_name=f"search-{study}",
        resume_filter=resume,
        tags={
            "medtune.study": study,
            "medtune.engine": opts.engine,
            "medtune.split_run_id": split.run_id,
            "medtune.objective": opts.objective,
            "medtune.direction": direction,
        },
    ) as parent:
        parent.params(
            {
                "dataset": split.dataset,
                "engine": opts.engine,
                "space": space_path.name,
                "trials": opts.trials,
                "epochs": opts.epochs,
                "image_size": opts.image_size,
                "objective": opts.objective,
                "timeout": opts.timeout,
                "study": study,
                "seed": opts.seed,
                "class_weights": opts.class_weights,
                "pruner": opts.pruner if engine.optuna_options else "none",
                "storage": _storage_label(opts.storage),
                "weights": opts.weights if backbones != ["custom"] else "n/a",
                "budget_min": round(opts.budget / 60, 2) if opts.budget else "none",
                "image_sizes": ",".join(map(str, cfg.rungs)) if cfg.rungs else opts.image_size,
                "warm_start": opts.warm_start,
                "plateau": opts.plateau,
            }
        )
        if weights:
            parent.json({name: w.tags() for name, w in weights.items()}, "weights.json")
        parent.file(space_path)
        tracking.log_manifest(split.manifest, split.root, split.dataset, "training")
        recorder = MlflowRecorder(parent, experiment_id, opts, study, data, split.classes, weights)
        log.info(
            "Search %s: %s engine, %s trials x %d epochs at %s px, objective %s%s",
            study,
            opts.engine,
            "up to " + str(opts.trials) if opts.budget else opts.trials,
            opts.epochs,
            "/".join(map(str, cfg.rungs)) if cfg.rungs else opts.image_size,
            opts.objective,
            f", budget {opts.budget / 60:.1f} min" if opts.budget else "",
        )
        from medtune.planning.budget import Budget

        cfg.budget = recorder.budget = Budget(opts.budget).start() if opts.budget else None
        summaries = engine.run(space, data, cfg, recorder)
        summaries = _with_run_ids(summaries, parent, experiment_id, study)
        best = best_trial(summaries, direction)
        if best is None and cfg.budget is not None:
            best = _best_stopped(summaries, direction)
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
        if cfg.budget is not None:
            parent.metrics(cfg.budget.record())
        _log_summary(parent, summaries, best, space, opts, direction, seconds)
        return SearchOutcome(parent.run_id, study, summaries, best, seconds)


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
    from medtune.search.optuna_engine import _redact

    return _redact(storage) if storage else "default"


def _with_run_ids(summaries, parent, experiment_id, study):
    """Fill in run ids and durations from the trial runs (keras-tuner does not keep them)."""
    runs = parent.client.search_runs(
        [experiment_id],
        filter_string=f"tags.`medtune.study` = '{study}' and tags.`medtune.step` = 'trial'",
        max_results=5000,
    )
    by_number = {int(r.data.tags["medtune.trial"]): r for r in runs if r.data.tags.get("medtune.trial", "").isdigit()}
    for s in summaries:
        run = by_number.get(s.number)
        if run is None:
            continue
        s.run_id = s.run_id or run.info.run_id
        if s.duration_s is None and "trial_seconds" in run.data.metrics:
            s.duration_s = run.data.metrics["trial_seconds"]
        if s.epochs_run is None and "medtune.epochs_run" in run.data.tags:
            s.epochs_run = int(run.data.tags["medtune.epochs_run"])
    return summaries


def _log_summary(parent, summaries, best, space, opts, direction, seconds) -> None:
    import tempfile

    from medtune.search import summary

    states = [s.state for s in summaries]
    pruned_saved = sum(max(opts.epochs - (s.epochs_run or opts.epochs), 0) for s in summaries if s.state == PRUNED)
    parent.metrics(
        {
            "trials_total": len(summaries),
            "trials_complete": states.count(COMPLETE),
            "trials_pruned": states.count(PRUNED),
            "trials_failed": states.count(FAILED),
            "epochs_saved_by_pruning": pruned_saved,
            "search_seconds": seconds,
        }
    )
    table = summary.trials_table(summaries, space)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        table.to_csv(path, index=False)
        parent.file(path)
    for name, fig in summary.search_figures(summaries, space, direction).items():
        parent.figure(fig, f"plots/{name}")
    if best is None:
        log.warning("No trial completed: nothing to report as best")
        parent.tags({"medtune.best_trial": "none"})
        return
    parent.json(
        {
            "params": best.params,
            "value": best.value,
            "objective": opts.objective,
            "trial": best.number,
            "run_id": best.run_id,
            "image_size": opts.image_size,
            "weights": opts.weights,
        },
        "best_params.json",
    )
    best_params = {f"best_{k}": v for k, v in best.params.items()}
    logged = parent.client.get_run(parent.run_id).data.params
    stale = sorted(
        k
        for k in set(best_params) | {k for k in logged if k.startswith("best_")}
        if k in logged and logged[k] != tracking.param_text(best_params.get(k))
    )
    parent.params(best_params)
    if stale:  # MLflow params cannot change: a resumed search whose best changed says so
        log.warning(
            "best_* params of this run are from an earlier session (%s); best_params.json is current", ", ".join(stale)
        )
        parent.tags({"medtune.best_params_stale": ",".join(stale)})
    else:
        with contextlib.suppress(Exception):
            parent.client.delete_tag(parent.run_id, "medtune.best_params_stale")
    parent.metrics({f"best_{opts.objective}": best.value, "best_so_far": best.value})
    parent.tags({"medtune.best_trial": best.number, "medtune.best_run_id": best.run_id or ""})
    log.info(
        "Search done in %.0f s: %d complete, %d pruned, %d failed; best trial %d %s=%.4f",
        seconds,
        states.count(COMPLETE),
        states.count(PRUNED),
        states.count(FAILED),
        best.number,
        opts.objective,
        best.value,
    )
