"""What every engine shares: the search settings, trial summaries and the recorder interface."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from medtune.options import default

if TYPE_CHECKING:
    from medtune.planning.budget import Budget

log = logging.getLogger(__name__)

COMPLETE, PRUNED, FAILED, RUNNING = "COMPLETE", "PRUNED", "FAILED", "RUNNING"
PRUNERS = ("median", "hyperband", "asha", "none")  # the Optuna engine's pruner names


@dataclass
class SearchSettings:
    """Plain values an engine needs; built by the search step from CLI parameters."""

    study: str
    trials: int = 10
    epochs: int = 5
    objective: str = default("objective")
    direction: str = "maximize"
    seed: int = default("seed")
    class_weights: bool = True
    storage: str | None = None  # Optuna storage URL
    pruner: str = "median"  # one of PRUNERS
    workdir: str = ".medtune/keras_tuner"  # keras-tuner state
    weights: dict = field(default_factory=dict)  # backbone -> resolved WeightsFile
    grid: dict | None = None  # parameter -> values: Optuna's GridSampler instead of TPE
    budget: Budget | None = None  # the search's share of the time (None: no time limit)
    rungs: tuple[int, ...] | None = None  # image sizes of the resolution rungs, smallest first
    warm_start: str = "none"  # recipes | recipe:<name> | auto (+ earlier studies of this split) | study names
    plateau_patience: int = 0  # stop when this many finished trials in a row improve nothing (0: never)
    split: str = ""  # the split's manifest hash: which earlier studies a warm start may import

    @property
    def fidelity(self) -> str:
        """What a trial's value measures: studies of equal fidelity can share trials."""
        return f"{self.objective}:{self.epochs}ep:{'/'.join(map(str, self.rungs or ()))}"

    def budget_spent(self) -> bool:
        return self.budget is not None and self.budget.spent()


@dataclass
class TrialSummary:
    """One trial as both engines describe it (the trials CSV and the plots are built from these)."""

    number: int
    state: str
    value: float | None
    params: dict
    duration_s: float | None = None
    epochs_run: int | None = None
    run_id: str | None = None
    error: str | None = None
    intermediate: dict[int, float] = field(default_factory=dict)


class TrialRecorder(Protocol):
    """Where an engine reports trials; the MLflow implementation is tracking.search_recorder.SearchRecorder."""

    def trial_started(self, number: int, params: dict, recipe: str | None = None) -> object: ...

    def epoch_end(self, handle: object, epoch: int, logs: dict) -> None: ...

    def trial_finished(
        self, handle: object, state: str, result=None, error: BaseException | None = None, reason: str | None = None
    ) -> None: ...

    def progress(self, summaries: list[TrialSummary]) -> None: ...

    def search_stopped(self, reason: str) -> None: ...

    def trial_abandoned(self, run_id: str, reason: str) -> None: ...


class NullRecorder:
    """A recorder that records nothing (tests, dry runs)."""

    def trial_started(self, number, params, recipe=None):
        return number

    def epoch_end(self, handle, epoch, logs):
        pass

    def trial_finished(self, handle, state, result=None, error=None, reason=None):
        pass

    def progress(self, summaries):
        pass

    def search_stopped(self, reason):
        pass

    def trial_abandoned(self, run_id, reason):
        pass


def rung_ends(rungs, epochs: int) -> set[int]:
    """Epoch counts after which the pruner may decide: each rung's end (every epoch without rungs)."""
    from medtune.hpo.trial import rung_schedule

    if not rungs or len(rungs) <= 1:
        return set(range(1, epochs + 1))
    return {end for _, _, end in rung_schedule(rungs, epochs)}


def best_trial(summaries: list[TrialSummary], direction: str) -> TrialSummary | None:
    done = [s for s in summaries if s.state == COMPLETE and s.value is not None]
    if not done:
        return None
    key = (lambda s: s.value) if direction == "maximize" else (lambda s: -s.value)
    return max(done, key=key)
