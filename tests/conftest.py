"""Shared fixtures: an isolated project directory and real-data lookup (helpers in tests/helpers.py).

Also how the suite shares the machine: ``-n auto`` (pyproject's addopts) starts one pytest-xdist
worker per usable core, up to 4, each pinned to its own core, so TensorFlow in a worker and in
the processes it starts takes one thread and the workers never oversubscribe. Slow tests go out
first; a module marked ``xdist_group`` runs whole on one worker (the PostgreSQL tests, one of
which stops the server, and modules whose module-scoped fixture trains or serves a model).
"""

from __future__ import annotations

import os

import pytest

from tests.helpers import activate_project, require_shared


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An isolated medtune home: its own mlflow.db, mlruns/, caches and small synthetic set.

    Sets the environment for this process and returns it for subprocesses.
    """
    home = tmp_path / "home"
    home.mkdir()
    return activate_project(monkeypatch, home)


@pytest.fixture
def shared_data():
    """Callable: ``shared_data("brain_mri")`` gives the real folder or skips with a reason."""
    return require_shared


def _usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning
        return []


def pytest_xdist_auto_num_workers(config):
    return max(1, min(4, len(_usable_cores()) or os.cpu_count() or 1))


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "loadgroup" and pytest.version_tuple[:2] >= (9, 2):
        import xdist  # 3.8 tags groups in a node id field pytest 9.2 no longer reads: no grouping, no word

        if tuple(int(part) for part in xdist.__version__.split(".")[:2]) <= (3, 8):
            raise pytest.UsageError("pytest-xdist 3.8 cannot group tests under pytest 9.2: pip install 'pytest<9.2'")
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ...
    cores = _usable_cores()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if worker and cores and workers <= len(cores):
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first
