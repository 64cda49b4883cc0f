"""``RunLogger``: params, metrics, tags and artifacts of one run id (parent, step or trial run alike)."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000


def metric_name(key: str) -> str:
    """The MLflow name of a Keras log key: validation and schedule keys as they are, the rest ``train_``."""
    if key.startswith("val_") or key in ("epoch_seconds", "learning_rate", "stage", "image_size"):
        return key
    return f"train_{key}"


class RunLogger:
    """Thin logging facade over one run id, usable for parent and child runs alike."""

    def __init__(self, run_id: str, client: MlflowClient | None = None):
        self.run_id = run_id
        self.client = client or MlflowClient()

    def params(self, values: Mapping[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        items = []
        for k, v in values.items():
            text = param_text(v)
            if k in existing:
                if existing[k] != text:
                    log.debug("param %s already logged as %r, keeping it", k, existing[k])
                continue
            items.append(Param(str(k), text))
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, values: Mapping[str, float], step: int | None = None, synchronous: bool = True) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(str(k), float(v), now, int(step or 0)) for k, v in values.items() if v is not None and _is_number(v)
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500], synchronous=synchronous)

    def epoch(self, logs: Mapping[str, Any], epoch: int, *, prefix: str = "", synchronous: bool = True) -> None:
        """One epoch's Keras logs under their MLflow names (:func:`metric_name`), non-finite values left out."""
        values = {
            prefix + metric_name(k): float(v) for k, v in logs.items() if _is_number(v) and math.isfinite(float(v))
        }
        self.metrics(values, step=epoch, synchronous=synchronous)

    def tags(self, values: Mapping[str, Any]) -> None:
        items = [RunTag(str(k), param_text(v)) for k, v in values.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def figure(self, fig, artifact_file: str) -> None:
        from medtune.reports import save_figure

        with tempfile.TemporaryDirectory() as tmp:
            path = save_figure(fig, Path(tmp) / Path(artifact_file).name)
            self.file(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def json(self, obj: Any, artifact_file: str) -> None:
        self.text(json.dumps(obj, indent=2, default=str), artifact_file)

    def text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text)
            self.file(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def directory(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def param_text(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict, tuple)) else str(v)
    return text[:MAX_PARAM_LEN]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


def status_for(exc: BaseException | None) -> str:
    """FINISHED, KILLED (interrupted: a signal, or an error whose class says ``run_status = "KILLED"``) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt) or getattr(exc, "run_status", None) == "KILLED":
        return "KILLED"
    return "FAILED"
