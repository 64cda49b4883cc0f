"""The one rule that ends a search between trials, whichever engine runs it."""

from __future__ import annotations

from medtune.hpo.base import SearchSettings


def stop_reason(
    cfg: SearchSettings,
    values: list[float | None],
    *,
    done: int | None = None,
    failures: int = 0,
    grid_exhausted: bool = False,
) -> str | None:
    """Why the search stops now, or None to start another trial.

    ``values``: the objective of each finished trial in order (None for pruned or failed ones);
    ``done``: trials that count against ``cfg.trials`` (None when the engine counts them itself);
    ``failures``: trials failed in this session.
    """
    if done is not None and done >= cfg.trials:
        return f"trial budget: {done} trials done"
    if grid_exhausted:
        return "every point of the grid has been tried"
    if cfg.budget_spent():
        return f"time budget of {cfg.budget.seconds / 60:.1f} min spent after {len(values) if done is None else done} trials"
    if failures > max(3, cfg.trials):
        return f"{failures} trials failed in this session (see the FAILED runs for reasons)"
    if cfg.plateau_patience:
        return plateaued(values, patience=cfg.plateau_patience, maximize=cfg.direction == "maximize")
    return None


def plateaued(
    values: list[float | None], *, patience: int, min_delta: float = 1e-3, min_trials: int = 4, maximize: bool = True
) -> str | None:
    """The early-stop rule of a search: the reason to stop, or None.

    ``values`` are the objective values of finished trials in order (None for pruned or failed
    ones, which count as trials without an improvement). Stop when at least ``min_trials`` have
    finished and the best value has not improved by more than ``min_delta`` over the last
    ``patience`` of them.
    """
    if patience <= 0 or len(values) < max(min_trials, patience + 1):
        return None
    sign = 1.0 if maximize else -1.0
    best_before = None
    for v in values[:-patience]:
        if v is not None and (best_before is None or sign * v > sign * best_before):
            best_before = v
    if best_before is None:
        return None
    recent = [v for v in values[-patience:] if v is not None]
    if any(sign * (v - best_before) > min_delta for v in recent):
        return None
    return (
        f"plateau: no trial improved the best value {best_before:.4f} by more than {min_delta:g} "
        f"in the last {patience} trials"
    )
