"""A time budget: parsed from the user's words, measured on an injectable clock.

``parse_budget("90")`` (minutes), ``"90m"``, ``"2h"``, ``"1h30m"`` or ``"45s"`` give seconds;
``Budget`` hands out shares (the search's, the final training's) and says when a share is spent,
so engines ask it before a trial starts and at each epoch boundary. Tests drive it with a fake
clock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medtune.errors import ConfigError

__all__ = ["Budget", "parse_budget", "plateaued"]

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([hms]?)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "": 60.0, "s": 1.0}


def parse_budget(text: str | float | int | None) -> float | None:
    """Seconds for ``text``; None for no budget (empty, ``0``, ``none``).

    Raises:
        ConfigError: anything else than minutes or ``<n>h``, ``<n>m``, ``<n>s`` parts.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * 60.0
    else:
        raw = str(text).strip().lower().replace(" ", "")
        if raw in ("", "0", "none", "off"):
            return None
        parts = _PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw or (len(parts) > 1 and any(u == "" for _, u in parts)):
            raise ConfigError(f"budget: {text!r} is not a duration; give minutes (90), or 90m, 2h, 1h30m")
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds < 0:
        raise ConfigError(f"budget: {text!r} is negative")
    return seconds or None


@dataclass
class Budget:
    """A wall-clock budget from ``start()``; ``None`` seconds means unlimited."""

    seconds: float | None
    clock: Callable[[], float] = time.monotonic
    started: float | None = field(default=None)

    def start(self) -> Budget:
        if self.started is None:
            self.started = self.clock()
        return self

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def remaining(self) -> float | None:
        return None if self.seconds is None else max(0.0, self.seconds - self.elapsed())

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds

    def share(self, fraction: float) -> Budget:
        """A sub-budget of ``fraction`` of what remains now, started now (same clock)."""
        remaining = self.remaining()
        return Budget(None if remaining is None else remaining * fraction, self.clock).start()

    def allows(self, expected_s: float) -> bool:
        """Whether something expected to take ``expected_s`` still fits."""
        remaining = self.remaining()
        return remaining is None or expected_s <= remaining

    def record(self) -> dict[str, float]:
        """What to log: the budget planned and used, in seconds."""
        return {
            "budget_planned_s": float("nan") if self.seconds is None else self.seconds,
            "budget_used_s": self.elapsed(),
        }


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
