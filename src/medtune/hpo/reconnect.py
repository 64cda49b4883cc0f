"""An Optuna storage that rides out a database restart: every call retried with back-off.

Wraps Optuna's RDB storage. When the database stops answering (PostgreSQL restarted, the
network dropped), each storage call is retried with exponential back-off; the worker logs one
warning when the outage starts and one line when the database is back, and training goes on
meanwhile (the trial blocks only at its next report). If the database stays down longer than
``$MEDTUNE_DB_WAIT`` seconds (default 120), :class:`StorageUnavailable` stops the search with one
line; its runs end KILLED and the same command resumes it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from medtune.errors import MedtuneError

log = logging.getLogger(__name__)

FIRST_DELAY_S, MAX_DELAY_S = 1.0, 15.0


class StorageUnavailable(MedtuneError):
    """The study's database stayed unreachable past the wait: the search stops, its runs end KILLED."""

    run_status = "KILLED"  # interrupted from outside, like SIGTERM: resumable as it is


def max_wait_s() -> float:
    return float(os.environ.get("MEDTUNE_DB_WAIT", "120"))


def _unreachable(exc: BaseException) -> bool:
    """A lost or refused connection (not a constraint or a programming error)."""
    import sqlalchemy.exc

    if isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__ or exc
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))


class _Outage:
    """One outage at a time per process: one warning when it starts, one line when it ends."""

    def __init__(self, label: str):
        self.label, self.lock, self.since = label, threading.Lock(), None

    def begin(self, exc: BaseException) -> float:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                cause = exc.__cause__ or exc
                first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                log.warning(
                    "%s is unreachable (%s): retrying with back-off for up to %.0f s", self.label, first, max_wait_s()
                )
            return self.since

    def end(self) -> None:
        with self.lock:
            if self.since is not None:
                log.info("%s answers again after %.0f s", self.label, time.monotonic() - self.since)
                self.since = None


def _retrying(name: str) -> Callable:
    def call(self, *args, **kwargs):
        method = getattr(self._inner, name)
        delay = FIRST_DELAY_S
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                since = self._outage.begin(exc)
                if time.monotonic() - since > max_wait_s():
                    raise StorageUnavailable(
                        f"storage={self._outage.label}: unreachable for more than {max_wait_s():.0f} s; the search "
                        "stopped (its runs ended KILLED; run the same command again to resume)"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            self._outage.end()
            return result

    call.__name__ = name
    return call


def _methods() -> list[str]:
    names = set()
    for base in (BaseStorage, BaseHeartbeat):
        names |= {n for n, v in vars(base).items() if callable(v) and not n.startswith("__")}
    return sorted(names)


class ReconnectingStorage(BaseStorage, BaseHeartbeat):
    """Optuna's storage, each call retried while the database is unreachable (see the module)."""

    def __init__(self, inner: BaseStorage, label: str):
        self._inner = inner
        self._outage = _Outage(label)

    # every method of Optuna's storage and heartbeat interfaces, delegated with the retry
    locals().update({name: _retrying(name) for name in _methods()})
