"""Helpers shared by the benchmarks: where the real data is, an isolated medtune home, a table."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data(name: str) -> Path:
    root = Path(os.environ.get("MEDTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root / name
    if not path.is_dir():
        sys.exit(f"benchmark needs {path} (set MEDTUNE_SHARED_DATA to the folder holding {name}/)")
    return path


def isolated_home(prefix: str) -> Path:
    """A fresh medtune home (tracking store, caches) so runs measure cold starts honestly."""
    home = Path(tempfile.mkdtemp(prefix=f"medtune-bench-{prefix}-"))
    os.environ["MEDTUNE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return home


def table(rows: list[dict], title: str) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols}
    lines = [title, "  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(_fmt(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
