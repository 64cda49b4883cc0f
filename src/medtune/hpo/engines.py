"""The search engines behind one small interface, as Optuna keeps its samplers: a Protocol and a registry.

The search step looks an engine up by name and calls the same two methods on any of them; what
differs between engines is data here (which options they take), never an if/else in the step.
Each engine imports its library only when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from medtune.hpo.base import SearchSettings, TrialRecorder, TrialSummary
    from medtune.hpo.trial import TrialData
    from medtune.space import SearchSpace

__all__ = ["ENGINES", "ENGINE_ALIASES", "Engine", "REGISTRY", "get_engine"]


class Engine(Protocol):
    name: str
    optuna_options: bool  # takes pruner, storage, timeout and warm starts (Optuna's study)
    counts_trials: bool  # `trials` is its budget (keras-tuner's Hyperband sets its own from epochs)
    grid: bool  # tries every point of the space's grid once (the trial count is the grid's size)
    study_label: str  # its part of a default study name (kept stable so that old studies resume)

    def check_state(self, space: SearchSpace, cfg: SearchSettings) -> None:
        """Before the search run opens: stop with one line if saved state cannot be resumed."""

    def run(
        self, space: SearchSpace, data: TrialData, cfg: SearchSettings, recorder: TrialRecorder
    ) -> list[TrialSummary]:
        """Run trials until the budget (trials, time, plateau) is spent; every trial's summary."""


@dataclass(frozen=True)
class OptunaEngine:
    """TPE (``optuna``) or every point of a grid (``grid``: Optuna's GridSampler), in an RDB storage."""

    name: str
    optuna_options: bool = True
    counts_trials: bool = True
    grid: bool = False

    @property
    def study_label(self) -> str:
        return self.name

    def check_state(self, space, cfg) -> None:
        from medtune.hpo import optuna_engine

        optuna_engine.check_state(space, cfg)

    def run(self, space, data, cfg, recorder):
        from medtune.hpo import optuna_engine

        return optuna_engine.run_search(space, data, cfg, recorder)


@dataclass(frozen=True)
class KerasTunerEngine:
    """keras-tuner's BayesianOptimization (``bayesian``) or Hyperband (``keras_hyperband``)."""

    name: str
    optuna_options: bool = False
    counts_trials: bool = True
    grid: bool = False

    @property
    def study_label(self) -> str:
        return "hyperband" if self.name == "keras_hyperband" else self.name  # its studies' name before the rename

    def check_state(self, space, cfg) -> None:  # noqa: ARG002 - the oracle's files, not the space
        from medtune.hpo import keras_tuner_engine

        keras_tuner_engine.check_state(cfg)

    def run(self, space, data, cfg, recorder):
        from medtune.hpo import keras_tuner_engine

        return keras_tuner_engine.run_search(self.name, space, data, cfg, recorder)


REGISTRY: dict[str, Engine] = {
    "optuna": OptunaEngine("optuna"),
    "bayesian": KerasTunerEngine("bayesian"),
    "keras_hyperband": KerasTunerEngine("keras_hyperband", counts_trials=False),
    "grid": OptunaEngine("grid", grid=True),
}
ENGINES = tuple(REGISTRY)
ENGINE_ALIASES = {"hyperband": "keras_hyperband"}  # the old spelling; `hyperband` is also an Optuna pruner


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (or an old alias of it).

    Raises:
        ConfigError: no such engine.
    """
    from medtune.errors import ConfigError

    name = ENGINE_ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ConfigError(f"engine={name!r}: expected one of {', '.join(ENGINES)}")
    return REGISTRY[name]
