"""A PostgreSQL storage without its driver (the `postgres` extra) is one line, before any work."""

from __future__ import annotations

import sys

import pytest

from medtune.errors import ConfigError
from medtune.hpo import optuna_engine
from medtune.steps.search import SearchOptions, check_options

URL = "postgresql://medtune:secret@db.lab:5432/optuna"


@pytest.fixture
def no_psycopg2(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` raises ImportError


def test_postgres_storage_without_driver_names_the_extra(no_psycopg2):
    with pytest.raises(ConfigError) as info:
        check_options(SearchOptions(storage=URL))
    message = str(info.value)
    assert "pip install 'medtune[postgres]'" in message and "\n" not in message
    assert "secret" not in message, "the password is redacted"


def test_make_storage_checks_the_driver_too(no_psycopg2):
    with pytest.raises(ConfigError, match=r"medtune\[postgres\]"):
        optuna_engine.make_storage(URL)


def test_sqlite_storage_needs_no_driver(no_psycopg2):
    check_options(SearchOptions(storage="sqlite:///optuna.db"))
