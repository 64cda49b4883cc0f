"""One temporary SQLite store per test module (as optuna-integration tests its MLflow callback)."""

from __future__ import annotations

import itertools

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from medtune.datasets.registry import safe_name
from tests.helpers import sqlite_store

_NUMBERS = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The store's root folder; MLflow and ``MEDTUNE_HOME`` point at it for the whole module."""
    root = tmp_path_factory.mktemp("tracking")
    with sqlite_store(root, "setup") as (mp, _):
        mp.setenv("MEDTUNE_HOME", str(root))
        yield root


@pytest.fixture
def client(store, monkeypatch):
    """A client of the module's store; no launcher run, active run or active experiment left over."""
    from mlflow.tracking import fluent

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # what a test's set_experiment exports
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    return MlflowClient()


@pytest.fixture
def dataset(request):
    """A dataset name of this test only, so each test reads its own experiment."""
    return f"{safe_name(request.node.name)[:40]}_{next(_NUMBERS)}"
