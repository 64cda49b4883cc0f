"""The console, saved with each step: every step run logs its share of the log lines as ``console.log``."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

_CONSOLE: dict[str, Any] = {}


def capture_console(formatter: logging.Formatter | None = None) -> Path:
    """Copy this process's log lines into a file; each step run saves its share as ``console.log``."""
    fd, name = tempfile.mkstemp(prefix="medtune-console-", suffix=".log")
    os.close(fd)
    handler = logging.FileHandler(name, encoding="utf-8")
    handler.setFormatter(formatter or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    _CONSOLE.update(path=Path(name), offset=0, handler=handler)
    return Path(name)


def save_console(run) -> None:
    """Log the console lines written since the previous step saved its own, as ``console.log`` on ``run``."""
    path = _CONSOLE.get("path")
    if path is None:
        return
    _CONSOLE["handler"].flush()
    data = path.read_bytes()
    _CONSOLE["offset"], start = len(data), _CONSOLE["offset"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "console.log"
        out.write_bytes(data[start:])
        run.file(out)
