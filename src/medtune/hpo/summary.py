"""Engine-independent views of a finished search: the trials table and Optuna's plots.

Plots are drawn by Optuna's matplotlib backend from an in-memory study rebuilt from the
trial summaries, so keras-tuner searches get the same pictures as Optuna searches.
"""

from __future__ import annotations

import logging
import math
import warnings

import optuna
import pandas as pd

from medtune.hpo.base import COMPLETE, PRUNED, TrialSummary
from medtune.space import SearchSpace

log = logging.getLogger(__name__)


def trials_table(summaries: list[TrialSummary], space: SearchSpace) -> pd.DataFrame:
    rows = []
    for s in sorted(summaries, key=lambda s: s.number):
        row = {
            "number": s.number,
            "state": s.state,
            "value": s.value,
            "duration_s": s.duration_s,
            "epochs_run": s.epochs_run,
            "run_id": s.run_id,
            "error": s.error,
        }
        row.update({name: s.params.get(name) for name in space.names()})
        rows.append(row)
    return pd.DataFrame(rows)


def as_study(summaries: list[TrialSummary], space: SearchSpace, direction: str) -> optuna.Study:
    """An in-memory Optuna study holding the finished trials (for plotting only)."""
    from medtune.hpo.optuna_engine import distribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    for s in summaries:
        if s.state not in (COMPLETE, PRUNED):
            continue
        params = {k: v for k, v in s.params.items() if k in space.names()}
        dists = {k: distribution(space[k]) for k in params}
        try:
            dists = {k: d for k, d in dists.items() if _fits(d, params[k])}
            params = {k: params[k] for k in dists}
            trial = optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if s.state == COMPLETE else optuna.trial.TrialState.PRUNED,
                value=s.value if s.state == COMPLETE else None,
                params=params,
                distributions=dists,
                intermediate_values={
                    int(k): float(v) for k, v in s.intermediate.items() if v is not None and math.isfinite(v)
                },
            )
            study.add_trial(trial)
        except (ValueError, TypeError) as exc:
            log.debug("trial %d left out of the plots: %s", s.number, exc)
    return study


def _fits(dist: optuna.distributions.BaseDistribution, value) -> bool:
    """Whether ``value`` lies in ``dist`` (a value of an older space file is left out, not the trial)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def search_figures(summaries: list[TrialSummary], space: SearchSpace, direction: str) -> dict:
    """{file name: matplotlib Figure} for history, importances and parallel coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    study = as_study(summaries, space, direction)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    figures = {}
    makers = {
        "optimization_history.png": lambda: ovm.plot_optimization_history(study),
        "param_importances.png": lambda: ovm.plot_param_importances(study),
        "parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(study),
    }
    for name, make in makers.items():
        if name != "optimization_history.png" and len(complete) < 2:
            log.info("%s needs at least 2 complete trials; skipped", name)
            continue
        if not complete:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            ax = ax[0] if hasattr(ax, "__len__") and not hasattr(ax, "figure") else ax
            fig = ax.figure if hasattr(ax, "figure") else ax.get_figure()
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            figures[name] = fig
        except Exception as exc:  # a plot that cannot be drawn must not fail the search
            log.warning("could not draw %s: %s", name, exc)
    return figures
