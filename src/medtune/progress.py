"""Progress of long steps: a tqdm bar on a terminal, plain log lines elsewhere (CI, `mlflow run` logs).

``MEDTUNE_PROGRESS=bar`` or ``=lines`` forces either mode; by default a bar is drawn only when
standard error is a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("medtune.progress")

LINE_EVERY_FRACTION = 0.1  # without a terminal: a line every 10 % ...
LINE_EVERY_SECONDS = 30.0  # ... or every 30 s, whichever comes first


def use_bars(stream=None) -> bool:
    forced = os.environ.get("MEDTUNE_PROGRESS", "").strip().lower()
    if forced in ("bar", "bars", "tty"):
        return True
    if forced in ("line", "lines", "log", "plain"):
        return False
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 20 s"``, ``"1 h 05 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Counter:
    """Progress over ``total`` units of one long step.

    Args:
        desc: what is counted, e.g. ``"validating files"``.
        total: how many units.
        unit: the unit's name (``file``, ``image``, ``epoch``, ``trial``).
        lines: without a terminal, log a line every 10 % (or 30 s); False when the caller logs
            its own line per unit (it can add :meth:`eta` to it).
        stream: where a bar is drawn (default standard error).
    """

    def __init__(self, desc: str, total: int, unit: str = "it", *, lines: bool = True, stream=None):
        self.desc, self.total, self.unit, self.lines = desc, max(int(total), 0), unit, lines
        self.done = 0
        self.t0 = time.perf_counter()
        self._last_line = (0.0, 0)  # (time, tenth) of the last line logged
        self._stream = stream
        self._bar = None
        self._bars = use_bars(stream)

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def to(self, done: int, total: int | None = None) -> None:
        """Set the count (the ``progress(done, total)`` callbacks of scan and decode)."""
        if total is not None and total != self.total:
            self.total = int(total)
            if self._bar is not None:
                self._bar.total = self.total
        self.update(int(done) - self.done)

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if self._bars and self._bar is None and self.total:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.desc,
                unit=self.unit,
                file=self._stream or sys.stderr,
                leave=False,
                dynamic_ncols=True,
                initial=self.done - n,
            )
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        if not self.lines or not self.total:
            return
        now = time.perf_counter() - self.t0
        fraction = self.done / self.total
        last_t, last_step = self._last_line
        step = int(fraction / LINE_EVERY_FRACTION + 1e-9)
        if self.done >= self.total or step > last_step or now - last_t >= LINE_EVERY_SECONDS:
            self._last_line = (now, step)
            log.info(
                "%s: %d/%d %ss (%d%%), %s%s",
                self.desc,
                self.done,
                self.total,
                self.unit,
                100 * fraction,
                duration(now),
                "" if self.done >= self.total else f", {self.eta()}",
            )

    def eta(self) -> str:
        """``"ETA 3 min 20 s"`` from the mean time per unit so far."""
        if not self.done or not self.total:
            return "ETA -"
        per = (time.perf_counter() - self.t0) / self.done
        return f"ETA {duration(per * max(self.total - self.done, 0))}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TqdmHandler(logging.StreamHandler):
    """A log handler that writes above the bars (tqdm.write), so lines and bars do not garble."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


# ---------------------------------------------------------------- values in progress lines


def finite(value) -> bool:
    """Whether ``value`` is a finite number (metrics from Keras logs may be None, NaN or tensors)."""
    import math

    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value) -> str:
    """A metric for a progress line: 4 decimals, or ``-`` when there is none."""
    return "-" if value is None or not finite(value) else f"{float(value):.4f}"


def short_params(params: dict) -> str:
    """``k=v, ...`` with floats to 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
