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


def synthetic_shape() -> tuple[int, int]:
    """Images per class and side of the ``synthetic`` set (``$MEDTUNE_SYNTHETIC=per_class,size``)."""
    raw = os.environ.get("MEDTUNE_SYNTHETIC", "120,96")
    try:
        per_class, size = (int(v) for v in raw.split(","))
    except ValueError as exc:
        from medtune.errors import ConfigError

        raise ConfigError(f"MEDTUNE_SYNTHETIC={raw!r}: expected '<images per class>,<size>', e.g. 120,96") from exc
    return per_class, size
