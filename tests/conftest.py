"""Shared fixtures: an isolated project directory and real-data lookup (helpers in tests/helpers.py)."""

from __future__ import annotations

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
