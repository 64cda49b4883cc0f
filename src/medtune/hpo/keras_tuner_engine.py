"""keras-tuner search (BayesianOptimization or Hyperband) over a medtune space.

keras-tuner 1.4 ignores ``logger=``, so tracking comes from :class:`_TrackedTunerMixin`, which
overrides ``run_trial`` and trains through the same :func:`train_trial` as the Optuna engine.
Distributed mode works unchanged: set ``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP`` and
``KERASTUNER_ORACLE_PORT`` as keras-tuner documents (the chief only serves the oracle).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import keras_tuner as kt

from medtune.errors import ConfigError, InternalError, as_search_error, stops_the_search
from medtune.hpo.base import COMPLETE, FAILED, PRUNED, RUNNING, SearchSettings, TrialRecorder, TrialSummary
from medtune.hpo.stopping import stop_reason
from medtune.hpo.trial import TrialData, train_trial
from medtune.space import Param, SearchSpace

log = logging.getLogger(__name__)

_STATES = {
    "COMPLETED": COMPLETE,
    "FAILED": FAILED,
    "INVALID": FAILED,
    "RUNNING": RUNNING,
    "STOPPED": "STOPPED",
    "IDLE": "IDLE",
}


# ---------------------------------------------------------------- space adapter


def _declare_one(hp: kt.HyperParameters, p: Param):
    if p.type == "int":
        kwargs = {"step": int(p.step)} if p.step else {}
        return hp.Int(
            p.name, int(p.low), int(p.high), sampling="log" if p.log else "linear", default=p.default, **kwargs
        )
    if p.type == "float":
        kwargs = {"step": float(p.step)} if p.step else {}
        return hp.Float(
            p.name, float(p.low), float(p.high), sampling="log" if p.log else "linear", default=p.default, **kwargs
        )
    if p.type == "bool":
        return hp.Boolean(p.name, default=bool(p.default) if p.default is not None else False)
    return hp.Choice(p.name, list(p.choices), default=p.default)


def declare(hp: kt.HyperParameters, space: SearchSpace) -> dict:
    """Declare every parameter of ``space`` on ``hp`` (conditions become conditional scopes)."""
    values: dict = {}
    for p in space.params:
        if p.condition:
            scopes = [
                hp.conditional_scope(parent, list(allowed) if isinstance(allowed, (list, tuple)) else [allowed])
                for parent, allowed in p.condition.items()
            ]
            for scope in scopes:
                scope.__enter__()
            try:
                value = _declare_one(hp, p)
            finally:
                for scope in reversed(scopes):
                    scope.__exit__(None, None, None)
        else:
            value = _declare_one(hp, p)
        if space.is_active(p.name, values):
            values[p.name] = value
    return values


def active_values(space: SearchSpace, hp_values: dict) -> dict:
    """The trial's values without keras-tuner's bookkeeping (``tuner/...``) or inactive params."""
    values: dict = {}
    for p in space.params:
        if p.name in hp_values and space.is_active(p.name, values):
            v = hp_values[p.name]
            values[p.name] = bool(v) if p.type == "bool" else v
    return values


class SpaceHyperModel(kt.HyperModel):
    """Declares the space for the oracle; ``build`` returns the real model for those values."""

    def __init__(self, space: SearchSpace, input_shape, n_classes: int):
        super().__init__(name="medtune", tunable=True)
        self.space, self.input_shape, self.n_classes = space, input_shape, n_classes

    def build(self, hp):
        from medtune.models import build_model

        values = declare(hp, self.space)
        return build_model(values, self.input_shape, self.n_classes)


# ---------------------------------------------------------------- tuners


class _TrackedTunerMixin:
    """Runs each trial through medtune's trainer and reports it to the recorder.

    Hyperband's later rounds (``tuner/trial_id`` set) train the promoted configuration again from
    scratch for ``tuner/epochs`` epochs, as a new tracked trial, instead of resuming a checkpoint.
    """

    def _setup_medtune(self, space, data, cfg, recorder):
        self._space, self._data, self._cfg, self._recorder = space, data, cfg, recorder
        self._own_trials: dict[int, TrialSummary] = {}  # a distributed worker's oracle is remote

    def run_trial(self, trial, *args, **kwargs):  # noqa: ARG002
        from medtune.training import release_model

        cfg = self._cfg
        hp_values = trial.hyperparameters.values
        params = active_values(self._space, hp_values)
        epochs = int(hp_values.get("tuner/epochs", cfg.epochs))
        number = int(trial.trial_id)
        handle = self._recorder.trial_started(number, params)
        result = None

        def on_epoch(epoch: int, logs: dict) -> bool:
            self._recorder.epoch_end(handle, epoch, logs)
            return cfg.budget_spent() and epoch < epochs - 1  # stop at this epoch boundary

        try:
            result = train_trial(
                params,
                self._data,
                epochs=epochs,
                objective=cfg.objective,
                class_weights=cfg.class_weights,
                seed=cfg.seed + number,
                on_epoch=on_epoch,
                weights=cfg.weights,
                rungs=None if "tuner/epochs" in hp_values else cfg.rungs,
            )
            if result.pruned:  # keras-tuner has no pruned state: the oracle marks it FAILED with this message
                self._recorder.trial_finished(handle, PRUNED, result, reason=BUDGET_STOP)
                self._own_trials[number] = TrialSummary(number, PRUNED, None, params, epochs_run=result.epochs_run)
                raise kt.errors.FailedTrialError(BUDGET_STOP)
            if not math.isfinite(result.value):
                raise RuntimeError(f"objective {cfg.objective} is not finite")
            self._recorder.trial_finished(handle, COMPLETE, result)
            self._own_trials[number] = TrialSummary(
                number, COMPLETE, result.value, params, duration_s=result.seconds, epochs_run=result.epochs_run
            )
            history = {k: v for k, v in result.history.items()}
            return {cfg.objective: result.value, **{k: v[-1] for k, v in history.items() if v and k != cfg.objective}}
        except kt.errors.FailedTrialError:
            raise
        except Exception as exc:
            self._recorder.trial_finished(handle, FAILED, result, error=exc)
            self._own_trials[number] = TrialSummary(
                number, FAILED, None, params, error=f"{type(exc).__name__}: {exc}"[:500]
            )
            if stops_the_search(exc):  # keras-tuner lets a FatalError end the search at once
                error = as_search_error(exc, number)
                raise kt.errors.FatalError(str(error)) from error
            raise kt.errors.FailedTrialError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException as exc:  # interrupted: end the run KILLED, let the tuner stop
            self._recorder.trial_finished(handle, FAILED, result, error=exc)
            raise
        finally:
            if result is not None:
                result.model = None
            release_model()

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self._recorder.progress(summaries(self))

    def pre_create_trial(self):
        """No new trial once the time budget is spent or the search has plateaued."""
        super().pre_create_trial()
        done = [s for s in summaries(self) if s.state in (COMPLETE, PRUNED)]
        reason = stop_reason(self._cfg, [s.value for s in done])  # keras-tuner counts trials itself
        if reason:
            raise _StopSearch(reason)


class _StopSearch(Exception):
    """Ends ``tuner.search`` between trials (keras-tuner has no time budget of its own)."""


BUDGET_STOP = "stopped: time budget spent"


class TrackedBayesian(_TrackedTunerMixin, kt.BayesianOptimization):
    pass


class TrackedHyperband(_TrackedTunerMixin, kt.Hyperband):
    pass


def make_tuner(engine: str, space: SearchSpace, data: TrialData, cfg: SearchSettings, recorder: TrialRecorder):
    objective = kt.Objective(cfg.objective, direction="max" if cfg.direction == "maximize" else "min")
    hypermodel = SpaceHyperModel(space, data.input_shape, len(data.classes))
    common = dict(
        hypermodel=hypermodel,
        objective=objective,
        seed=cfg.seed,
        directory=cfg.workdir,
        project_name=cfg.study,
        overwrite=False,
        max_consecutive_failed_trials=max(3, cfg.trials + 1),
    )
    try:
        if engine == "bayesian":
            tuner = TrackedBayesian(max_trials=cfg.trials, num_initial_points=min(3, cfg.trials), **common)
        elif engine in ("keras_hyperband", "hyperband"):
            tuner = TrackedHyperband(max_epochs=max(cfg.epochs, 2), factor=3, hyperband_iterations=1, **common)
        else:
            raise ConfigError(f"engine={engine!r}: expected bayesian or keras_hyperband for keras-tuner")
    except (json.JSONDecodeError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(_state_error(Path(cfg.workdir) / cfg.study, exc)) from exc
    tuner._setup_medtune(space, data, cfg, recorder)
    return tuner


def _state_error(state: Path, exc: BaseException, path: Path | None = None) -> str:
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    what = f"{path.name} in {state}" if path is not None else f"keras-tuner state in {state}"
    return (
        f"{what} cannot be reloaded ({type(exc).__name__}: {text}); it is probably truncated: "
        f"delete that folder to start over, or pass another -P study=..."
    )


def check_state(cfg: SearchSettings) -> None:
    """Stop with a clear message when the saved state of ``cfg.study`` cannot be read back.

    keras-tuner keeps its oracle and trials in JSON files; a write cut short (kill -9, full disk)
    leaves one truncated, and the tuner would fail with a raw ``JSONDecodeError`` on reload.
    """
    state = Path(cfg.workdir) / cfg.study
    if not state.is_dir():
        return
    for path in sorted(state.glob("*.json")) + sorted(state.glob("trial_*/trial.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(_state_error(state, exc, path)) from None


def summaries(tuner) -> list[TrialSummary]:
    """All trials of the oracle; on a distributed worker (remote oracle), the trials it ran."""
    trials = getattr(tuner.oracle, "trials", None)
    if trials is None:
        return sorted(getattr(tuner, "_own_trials", {}).values(), key=lambda s: s.number)
    out = []
    space = getattr(tuner, "_space", None)  # the same active params as the trial runs (and Optuna) show
    for trial_id, trial in sorted(trials.items(), key=lambda kv: int(kv[0])):
        values = trial.hyperparameters.values
        state = _STATES.get(str(trial.status), str(trial.status))
        if state == FAILED and BUDGET_STOP in (trial.message or ""):
            state = PRUNED  # stopped at an epoch boundary by the time budget, as Optuna records it
        out.append(
            TrialSummary(
                number=int(trial_id),
                state=state,
                value=trial.score if state == COMPLETE and trial.score is not None else None,
                params=active_values(space, values)
                if space is not None
                else {k: v for k, v in values.items() if not k.startswith("tuner/")},
                epochs_run=None,  # the oracle keeps one value per metric; the trial run's tag has the count
                error=(trial.message or "").strip().splitlines()[-1][:500] if trial.message else None,
            )
        )
    return out


def run_search(
    engine: str, space: SearchSpace, data: TrialData, cfg: SearchSettings, recorder: TrialRecorder
) -> list[TrialSummary]:
    tuner = make_tuner(engine, space, data, cfg, recorder)
    if engine in ("keras_hyperband", "hyperband"):
        log.info(
            "Hyperband sets its own number of trials from epochs=%d (max_epochs) and factor 3; trials=%d is ignored",
            cfg.epochs,
            cfg.trials,
        )
    recorder.progress(summaries(tuner))  # a resumed search shows its best so far from the start
    reason = "trial budget reached"
    try:
        tuner.search(verbose=0)
    except _StopSearch as stop:
        reason = str(stop)
    except kt.errors.FatalError as fatal:  # a trial's error that every trial would hit
        recorder.search_stopped(f"trial failed with an error every trial would hit: {fatal}")
        raise fatal.__cause__ if isinstance(fatal.__cause__, Exception) else InternalError(str(fatal)) from None
    except RuntimeError as exc:  # keras-tuner gives up after too many consecutive failed trials
        if "consecutive failures" not in str(exc):
            raise
        reason = str(exc).splitlines()[0]
        log.error("Stopping: %s (see the FAILED runs for reasons)", reason)
    log.info("Search stopped: %s", reason)
    recorder.search_stopped(reason)
    return summaries(tuner)
