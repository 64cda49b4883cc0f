"""Optuna TPE search over a medtune space, pruned per epoch, resumable from an RDB storage."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping

import optuna
from optuna.trial import TrialState

from medtune import settings as medtune_settings
from medtune.errors import ConfigError, as_search_error, stops_the_search
from medtune.hpo.base import (
    COMPLETE,
    FAILED,
    PRUNED,
    PRUNERS,
    RUNNING,
    SearchSettings,
    TrialRecorder,
    TrialSummary,
    rung_ends,
)
from medtune.hpo.reconnect import ReconnectingStorage, StorageUnavailable
from medtune.hpo.stopping import stop_reason
from medtune.hpo.trial import TrialData, train_trial
from medtune.processes import pid_alive
from medtune.space import Param, SearchSpace

log = logging.getLogger(__name__)

_STATES = {
    TrialState.COMPLETE: COMPLETE,
    TrialState.PRUNED: PRUNED,
    TrialState.FAIL: FAILED,
    TrialState.RUNNING: RUNNING,
    TrialState.WAITING: "WAITING",
}


# ---------------------------------------------------------------- space adapter


def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    if p.type == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=bool(p.log), step=int(p.step or 1))
    if p.type == "float":
        return optuna.distributions.FloatDistribution(float(p.low), float(p.high), log=bool(p.log), step=p.step)
    if p.type == "bool":
        return optuna.distributions.CategoricalDistribution([False, True])
    return optuna.distributions.CategoricalDistribution(list(p.choices))


def distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    return {p.name: distribution(p) for p in space.params}


def check_state(space: SearchSpace, cfg: SearchSettings) -> None:
    """Before the search run opens: a resumed study must accept this space (see below)."""
    check_space_unchanged(open_study(space, cfg), space)


def check_space_unchanged(study: optuna.Study, space: SearchSpace) -> None:
    """A clear error when a resumed study searched a categorical with other choices.

    Optuna cannot change a categorical's choices within a study: every trial would fail with
    "CategoricalDistribution does not support dynamic value space".
    """
    from medtune.errors import SpaceError

    wanted = {
        k: v for k, v in distributions(space).items() if isinstance(v, optuna.distributions.CategoricalDistribution)
    }
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            if name in wanted and dist != wanted[name]:
                raise SpaceError(
                    f"study {study.study_name}: {name} was searched with choices {list(dist.choices)}, the space "
                    f"file now has {list(wanted[name].choices)}; pass --study <new name> to search the edited space"
                )


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict:
    """Ask ``trial`` for every parameter active under the values chosen so far (in file order)."""
    values: dict = {}
    for p in space.params:
        if not space.is_active(p.name, values):
            continue
        if p.type == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=bool(p.log))
        elif p.type == "float":
            values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=bool(p.log))
        elif p.type == "bool":
            values[p.name] = trial.suggest_categorical(p.name, [False, True])
        else:
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return values


# ---------------------------------------------------------------- storage and study


def default_storage() -> str:
    return f"sqlite:///{medtune_settings.project_dir() / 'optuna.db'}"


def heartbeat_settings() -> tuple[int, int]:
    """Heartbeat interval and grace period in seconds (``$MEDTUNE_HEARTBEAT=interval,grace``)."""
    raw = os.environ.get("MEDTUNE_HEARTBEAT", "30,120")
    interval, grace = (int(x) for x in raw.split(","))
    return interval, grace


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker stopped beating (queued once more), and ``on_stale(trial)``:
    the surviving worker that noticed ends the dead worker's MLflow run."""

    def __init__(self, on_stale: Callable[[optuna.trial.FrozenTrial], None] | None = None):
        super().__init__(max_retry=1)
        self.on_stale = on_stale

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().__call__(study, trial)
        log.warning(
            "Trial %d: its worker (%s) stopped beating: marked FAIL and queued again", trial.number, _worker(trial)
        )
        if self.on_stale is not None:
            self.on_stale(trial)


def _worker(trial) -> str:
    return f"{trial.user_attrs.get('host', '?')}:{trial.user_attrs.get('pid', '?')}"


def make_storage(url: str | None, on_stale=None) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage with heartbeats, retried through a database restart (``search.reconnect``)."""
    interval, grace = heartbeat_settings()
    url = url or default_storage()
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise ConfigError(f"storage={url!r}: expected an RDB URL such as sqlite:///optuna.db or postgresql://...")
    check_driver(url)
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 defaults to psycopg 3; medtune ships psycopg2
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    import sqlalchemy.exc

    def unavailable(exc: Exception) -> ConfigError:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return ConfigError(f"storage={_redact(url)}: cannot open Optuna storage ({type(exc).__name__}: {first})")

    for attempt in range(3):
        try:
            rdb = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryStaleTrial(on_stale),
                engine_kwargs={"pool_pre_ping": True} if url.startswith("postgresql") else None,
            )
            return ReconnectingStorage(optuna.storages.get_storage(rdb), _redact(url))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            # Workers started together on an empty database race to create Optuna's tables
            # (SQLite says "table ... already exists"); a refused connection is not retried here.
            refused = isinstance(exc, sqlalchemy.exc.OperationalError) and "already exists" not in str(exc)
            if refused or attempt == 2:
                raise unavailable(exc) from exc
            time.sleep(1 + attempt)
        except Exception as exc:  # connection refused, unknown driver, bad credentials
            raise unavailable(exc) from exc


def check_driver(url: str) -> None:
    """A PostgreSQL storage needs psycopg2, which only the ``postgres`` extra installs: say so in one line."""
    if not url.startswith("postgresql"):
        return
    try:
        import psycopg2  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"storage={_redact(url)}: PostgreSQL needs its driver, which is not installed: "
            "pip install 'medtune[postgres]' (or psycopg2-binary)"
        ) from exc


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)  # Optuna's default warm-up
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "asha":  # asynchronous successive halving: rungs after 1, 3, 9, ... epochs
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner={name!r}: expected {', '.join(PRUNERS)}")


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random state is reseeded from (seed, trial number) at the start of every trial.

    With one fixed seed per process, two workers sharing a study (or a resumed search) would draw
    the same start-up parameters again; seeding per trial number keeps trial k reproducible and
    its random draws its own. (After the start-up trials, ``constant_liar`` keeps concurrent
    workers away from each other's running points; TPE may still return to a good finished one.)
    """

    def __init__(self, *, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study, trial) -> None:
        super().before_trial(study, trial)
        seed = (self._base_seed * 100_003 + trial.number) % 2**32
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)


def open_study(space: SearchSpace, cfg: SearchSettings, on_stale=None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # medtune prints its own progress
    _no_trial_tracebacks()
    if cfg.grid is not None:  # engine=grid: every point once, in an order drawn from the seed
        sampler = optuna.samplers.GridSampler(cfg.grid, seed=cfg.seed)
    else:
        sampler = TrialSeededTPESampler(
            seed=cfg.seed,
            n_startup_trials=min(10, max(3, cfg.trials // 3)),
            multivariate=True,
            group=True,
            constant_liar=True,  # a running trial counts as a poor result: parallel workers spread out
        )
    storage, pruner = make_storage(cfg.storage, on_stale), make_pruner(cfg.pruner, cfg.epochs)
    try:  # the database lets exactly one of several starting workers create the study
        study = optuna.create_study(
            study_name=cfg.study, storage=storage, sampler=sampler, pruner=pruner, direction=cfg.direction
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.study, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if study.direction.name.lower() != cfg.direction:
        raise ConfigError(f"study={cfg.study!r} was created to {study.direction.name.lower()}; use another study name")
    study.set_user_attr("objective", cfg.objective)
    if "fidelity" not in study.user_attrs:  # what its trials measured: warm starts import only equals
        study.set_user_attr("fidelity", cfg.fidelity)
        study.set_user_attr("split", cfg.split)
    if created:
        try:
            warm_start(study, space, cfg)
        except BaseException:  # a bad warm_start: no study left behind that a fixed command would skip seeding
            optuna.delete_study(study_name=cfg.study, storage=storage)
            raise
    return study


# ---------------------------------------------------------------- warm starts


def warm_start(study: optuna.Study, space: SearchSpace, cfg: SearchSettings) -> dict[str, int]:
    """Seed a new study: import earlier studies' finished trials, then queue the recipes.

    ``cfg.warm_start``: ``none``; ``recipes`` (the documented recipes the space can express, see
    :mod:`medtune.planning.recipes`, then the space's defaults); ``recipe:<name>[,<name>]`` (only
    those recipes); ``auto`` (recipes, and every
    other study in the storage on the same split with the same objective, epochs and rungs); or
    a comma-separated list of study names to import from (their fidelity must match). Runs once,
    in the worker whose ``open_study`` created the study, so workers starting together queue
    each recipe once. Returns what it did: ``{"imported": n, "enqueued": m}``.
    """
    mode = (cfg.warm_start or "none").strip()
    done = {"imported": 0, "enqueued": 0}
    names = None  # every recipe the space can express
    if mode == "none" or cfg.grid is not None or study.get_trials(deepcopy=False):
        return done
    sources: list[str] = []
    if mode == "auto":
        sources = [
            s.study_name
            for s in optuna.get_all_study_summaries(study._storage, include_best_trial=False)
            if s.study_name != study.study_name
            and s.user_attrs.get("split") == cfg.split
            and s.user_attrs.get("fidelity") == cfg.fidelity
        ]
    elif mode.startswith("recipe:"):
        names = [n.strip() for n in mode.removeprefix("recipe:").split(",") if n.strip()]
    elif mode != "recipes":
        sources = [name.strip() for name in mode.split(",") if name.strip()]
    wanted = distributions(space)
    for name in sources:
        try:
            other = optuna.load_study(study_name=name, storage=study._storage)
        except KeyError:
            raise ConfigError(f"warm_start={name}: no such study in this storage") from None
        if other.user_attrs.get("fidelity") != cfg.fidelity or other.user_attrs.get("split") != cfg.split:
            raise ConfigError(
                f"warm_start={name}: that study measured {other.user_attrs.get('fidelity')} on split "
                f"{other.user_attrs.get('split', '?')[:8]}, this one {cfg.fidelity} on {cfg.split[:8]}"
            )
        for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if any(k not in wanted or wanted[k] != d for k, d in t.distributions.items()):
                continue  # a parameter this space does not search the same way
            study.add_trial(
                optuna.trial.create_trial(
                    params=t.params,
                    distributions=t.distributions,
                    value=t.value,
                    intermediate_values=t.intermediate_values,
                    user_attrs={"imported_from": f"{name}#{t.number}", "epochs_run": t.user_attrs.get("epochs_run")},
                )
            )
            done["imported"] += 1
    from medtune.planning.recipes import RECIPES, recipes_for

    recipes = recipes_for(space, None if names is None else [n for n in names if n in RECIPES])
    if names is not None and (not recipes or any(n not in RECIPES for n in names)):
        bad = [n for n in names if n not in RECIPES] or names
        raise ConfigError(
            f"warm_start=recipe:{','.join(bad)}: not a recipe this space can express (recipes: {', '.join(RECIPES)})"
        )
    for name, params in recipes:
        study.enqueue_trial(params, user_attrs={"recipe": name}, skip_if_exists=True)
        done["enqueued"] += 1
    log.info(
        "Warm start of %s: %d trials imported from %s, %d recipes queued",
        study.study_name,
        done["imported"],
        ", ".join(sources) or "no earlier study",
        done["enqueued"],
    )
    return done


class _OneLineTrialFailures(logging.Filter):
    """Optuna logs every failed trial with a full traceback; medtune already records the reason
    (MLflow tag, progress line), and an interrupted search must end without a raw traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            return False
        record.exc_info, record.exc_text = None, None
        return True


def _no_trial_tracebacks() -> None:
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _OneLineTrialFailures) for f in logger.filters):
        logger.addFilter(_OneLineTrialFailures())


def fail_local_orphans(study: optuna.Study, on_orphan: Callable[[optuna.trial.FrozenTrial, str], None] | None = None):
    """Trials left RUNNING by a dead process on this host: mark FAIL, queue a retry at once and
    hand each to ``on_orphan(trial, reason)`` (which ends its MLflow run).

    (Optuna's heartbeat does the same for other hosts after the grace period.)
    """
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not pid or pid == os.getpid() or pid_alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "error", f"worker process {pid} died")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        failed.append(t.number)
        if on_orphan is not None:
            on_orphan(t, f"worker {_worker(t)} died")
    if failed:
        log.warning("Trials %s were orphaned by a dead worker: marked FAIL and queued again", failed)
    return failed


# ---------------------------------------------------------------- the search loop


def summaries(study: optuna.Study) -> list[TrialSummary]:
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") and "mlflow_run_id" not in t.user_attrs:
            continue  # refused before it ran: not a trial of this search
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        out.append(
            TrialSummary(
                number=t.number,
                state=_STATES.get(t.state, t.state.name),
                value=t.value if t.state == TrialState.COMPLETE else None,
                params=dict(t.params),
                duration_s=duration,
                epochs_run=t.user_attrs.get("epochs_run"),
                run_id=t.user_attrs.get("mlflow_run_id"),
                error=t.user_attrs.get("error"),
                intermediate=dict(t.intermediate_values),
            )
        )
    return out


def run_search(space: SearchSpace, data: TrialData, cfg: SearchSettings, recorder: TrialRecorder) -> list[TrialSummary]:
    """Run trials until ``cfg.trials`` are COMPLETE or PRUNED in the (possibly shared) study."""

    def abandoned(trial: optuna.trial.FrozenTrial, reason: str | None = None) -> None:
        if trial.user_attrs.get("mlflow_run_id"):
            reason = reason or f"worker {_worker(trial)} stopped beating"
            recorder.trial_abandoned(trial.user_attrs["mlflow_run_id"], reason)

    study = open_study(space, cfg, on_stale=abandoned)
    check_space_unchanged(study, space)
    fail_local_orphans(study, abandoned)
    recorder.progress(summaries(study))  # a resumed search shows its best so far from the start
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    failures = 0
    last_state: dict[str, str] = {}
    decide_at = rung_ends(cfg.rungs, cfg.epochs)

    def check_budget_share(trial: optuna.Trial) -> None:
        if _ahead(study, trial.number) >= cfg.trials:
            last_state["surplus"] = "yes"
            trial.set_user_attr("surplus", True)  # FAIL in the study, left out of medtune's trial table
            raise SurplusTrial(f"trial {trial.number}: other workers' trials already fill the budget of {cfg.trials}")

    def objective(trial: optuna.Trial) -> float:
        last_state["state"] = FAILED  # until the trial says otherwise: a failure anywhere counts
        check_budget_share(trial)  # before any work or run: several workers share one budget
        params = suggest(trial, space)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        handle = recorder.trial_started(trial.number, params, recipe=trial.user_attrs.get("recipe"))
        run_id = getattr(handle, "run_id", None)
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)

        def on_epoch(epoch: int, logs: Mapping) -> bool:
            if epoch == 0:  # again, once every trial created at the same moment is visible
                check_budget_share(trial)
            recorder.epoch_end(handle, epoch, dict(logs))
            value = logs.get(cfg.objective)
            if cfg.budget_spent() and epoch < cfg.epochs - 1:  # stop at this epoch boundary
                last_state["stopped"] = "budget"
                return True
            if value is None or not math.isfinite(float(value)):
                return False
            trial.report(float(value), epoch + 1)  # step = epochs trained: the pruners' resource
            # the pruner decides at the end of each rung; pruning the last epoch saves nothing
            return epoch + 1 in decide_at and epoch < cfg.epochs - 1 and trial.should_prune()

        from medtune.training import release_model

        result = None
        try:
            result = train_trial(
                params,
                data,
                epochs=cfg.epochs,
                objective=cfg.objective,
                class_weights=cfg.class_weights,
                seed=cfg.seed + trial.number,
                on_epoch=on_epoch,
                weights=cfg.weights,
                rungs=cfg.rungs,
            )
            trial.set_user_attr("epochs_run", result.epochs_run)
            if result.pruned:
                if last_state.get("stopped"):
                    trial.set_user_attr("stopped", "time budget spent")
                recorder.trial_finished(
                    handle, PRUNED, result, reason="time budget spent" if last_state.get("stopped") else "pruned"
                )
                last_state["state"] = PRUNED
                raise optuna.TrialPruned(f"pruned after {result.epochs_run} epoch(s)")
            if not math.isfinite(result.value):
                raise RuntimeError(f"objective {cfg.objective} is not finite")
            recorder.trial_finished(handle, COMPLETE, result)
            last_state["state"] = COMPLETE
            return result.value
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])
            recorder.trial_finished(handle, FAILED, result, error=exc)
            last_state["state"] = FAILED
            if stops_the_search(exc):  # every trial would fail the same way: stop after this one
                last_state["fatal"] = as_search_error(exc, trial.number)
            raise
        finally:
            if getattr(handle, "tracking_error", None):  # the study keeps why the trial has no run
                trial.set_user_attr("tracking_error", handle.tracking_error)
            if result is not None:
                result.model = None
            release_model()

    reason = None
    while reason is None:
        done = len(study.get_trials(deepcopy=False, states=counted))
        others = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))  # other workers' trials
        reason = stop_reason(
            cfg,
            _finished_values(study),
            done=done,
            failures=failures,
            grid_exhausted=cfg.grid is not None and study.sampler.is_exhausted(study),
        )
        if reason is not None:
            break
        if done + others >= cfg.trials:  # the rest of the budget is running elsewhere: wait for its end
            if not last_state.get("waiting"):
                log.info(
                    "%d of %d trials done, %d running on other workers: waiting for them", done, cfg.trials, others
                )
                last_state["waiting"] = "yes"
            optuna.storages.fail_stale_trials(study)  # a worker that died frees its share
            fail_local_orphans(study, abandoned)
            time.sleep(WAIT_FOR_WORKERS_S)
            continue
        last_state.clear()
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except Exception as exc:
            outage = _outage_in(exc)  # Optuna 5 masks it with an UnboundLocalError when its tell fails
            if outage is not None:
                raise outage from None
            raise
        if last_state.get("state") == FAILED and not last_state.get("surplus"):
            failures += 1
        recorder.progress(summaries(study))
        if "fatal" in last_state:
            recorder.search_stopped(f"trial failed with an error every trial would hit: {last_state['fatal']}")
            raise last_state["fatal"]
    log.info("Search stopped: %s", reason)
    recorder.search_stopped(reason)
    return summaries(study)


def _outage_in(exc: BaseException | None) -> StorageUnavailable | None:
    """The :class:`StorageUnavailable` behind ``exc`` (in its cause or context chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StorageUnavailable):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class SurplusTrial(RuntimeError):
    """A trial started while other workers' trials already filled the trial budget (recorded FAIL, never run)."""


WAIT_FOR_WORKERS_S = 2.0


def _ahead(study: optuna.Study, number: int) -> int:
    """Trials that take a share of the budget before trial ``number``: trial numbers order all workers alike."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=states))


def _finished_values(study: optuna.Study) -> list[float | None]:
    """Objective values of the finished trials in the order they finished (None: pruned)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    trials = [t for t in trials if "imported_from" not in t.user_attrs]
    trials.sort(key=lambda t: t.datetime_complete or t.datetime_start)
    return [t.value if t.state == TrialState.COMPLETE else None for t in trials]
