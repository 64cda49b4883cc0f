"""A time budget: parsed from the user's words, measured on an injectable clock.

``parse_budget("90")`` (minutes), ``"90m"``, ``"2h"``, ``"1h30m"`` or ``"45s"`` give seconds;
One ``Budget`` is created per command and handed down: ``share()`` gives the search, final
training and each ensemble member their part, and says when a share is spent,
so engines ask it before a trial starts and at each epoch boundary. Tests drive it with a fake
clock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medtune.errors import ConfigError

__all__ = ["Budget", "parse_budget"]

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

    def share(self, seconds: float | None = None, *, fraction: float = 1.0, keep: float = 0.0) -> Budget:
        """A part of this budget, started now on the same clock: ``seconds`` (None: all that remains)
        times ``fraction``, never more than what remains less ``keep`` seconds kept for later.
        Unlimited stays unlimited."""
        remaining = self.remaining()
        if remaining is None:
            return Budget(None, self.clock).start()
        available = max(0.0, remaining - keep)
        wanted = available if seconds is None else min(seconds, available)
        return Budget(wanted * fraction, self.clock).start()

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
