"""A grid over a search space: every categorical, boolean and stepped value (``engine=grid``).

Engine-agnostic: the Optuna engine feeds :func:`grid_values` to ``optuna.samplers.GridSampler``.
"""

from __future__ import annotations

import math

from medtune.errors import SpaceError
from medtune.space import Param, SearchSpace

MAX_POINTS = 100_000


def _values(p: Param) -> list | None:
    """The grid values of one parameter, or None when it is continuous (a float without a step)."""
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "bool":
        return [False, True]
    if p.type == "int":
        step = int(p.step or 1)
        return list(range(int(p.low), int(p.high) + 1, step))
    if p.step is None:
        return None
    n = int(math.floor((float(p.high) - float(p.low)) / float(p.step) + 1e-9))
    return [round(float(p.low) + i * float(p.step), 12) for i in range(n + 1)]


def grid_values(space: SearchSpace) -> dict[str, list]:
    """Every parameter's grid values, in file order.

    Raises:
        SpaceError: one line naming every float parameter without a ``step`` (a grid needs
            finite values), or a grid larger than :data:`MAX_POINTS`.
    """
    values = {p.name: _values(p) for p in space.params}
    continuous = [name for name, v in values.items() if v is None]
    if continuous:
        raise SpaceError(
            f"{space.source}: engine=grid needs finite values, but {', '.join(continuous)} "
            f"{'is' if len(continuous) == 1 else 'are'} continuous without a step: give "
            f"{'it' if len(continuous) == 1 else 'them'} a step or choices, or use engine=optuna"
        )
    size = grid_size(values)
    if size > MAX_POINTS:
        raise SpaceError(
            f"{space.source}: the grid has {size:,} points (more than {MAX_POINTS:,}): "
            "narrow the choices or widen the steps"
        )
    return values


def grid_size(values: dict[str, list]) -> int:
    return math.prod(len(v) for v in values.values())


def describe(values: dict[str, list]) -> str:
    """``"24 points: optimizer 3 x batch_size 2 x ..."`` for the log line before the first trial."""
    return f"{grid_size(values)} points: " + " x ".join(f"{name} {len(v)}" for name, v in values.items())
