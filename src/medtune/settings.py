"""Where medtune keeps things on disk. Read from the environment, no I/O at import."""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The directory medtune runs in (``mlflow run .`` runs in the project)."""
    return Path(os.environ.get("MEDTUNE_HOME", os.getcwd())).resolve()


def cache_dir() -> Path:
    """Decoded-array caches and generated datasets; ``$MEDTUNE_CACHE_DIR`` overrides."""
    env = os.environ.get("MEDTUNE_CACHE_DIR")
    return Path(env).resolve() if env else project_dir() / ".medtune" / "cache"


def data_root() -> Path | None:
    """``$MEDTUNE_DATA_DIR``: a folder holding one sub-folder per named dataset."""
    env = os.environ.get("MEDTUNE_DATA_DIR")
    return Path(env).resolve() if env else None
