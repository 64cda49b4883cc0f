"""The tracking store: where MLflow points, the ``medtune-<dataset>`` experiments, run tags and reads."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune import settings
from medtune.datasets.registry import safe_name

TAG_STEP = "medtune.step"
TAG_DATASET = "medtune.dataset"
TAG_PID = "medtune.pid"
TAG_HOST = "medtune.host"
TAG_ERROR = "medtune.error"


def default_tracking_uri() -> str:
    return f"sqlite:///{settings.project_dir() / 'mlflow.db'}"


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow at ``tracking_uri``, ``$MLFLOW_TRACKING_URI`` or the project's SQLite file."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # child processes (workers, servers) inherit it
    return uri


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def experiment_name(dataset: str) -> str:
    return f"medtune-{safe_name(dataset)}"


def ensure_experiment(dataset: str) -> str:
    """Return the id of ``medtune-<dataset>``, creating it (artifacts under ./mlruns) if needed."""
    client = MlflowClient()
    name = experiment_name(dataset)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (settings.project_dir() / "mlruns" / safe_name(name)).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another worker
        return client.get_experiment_by_name(name).experiment_id


def find_runs(dataset: str, step: str, *, status: str = "FINISHED", extra_filter: str = "", max_results: int = 50):
    """Runs of one step for a dataset, newest first."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment_name(dataset))
    if exp is None:
        return []
    flt = f"tags.`{TAG_STEP}` = '{step}'"
    if status:
        flt += f" and attributes.status = '{status}'"
    if extra_filter:
        flt += f" and {extra_filter}"
    return client.search_runs(
        [exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=max_results
    )


def find_run(run_id: str):
    """The run ``run_id``, or None when this store has no such run."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        return None


def metric_values(run_id: str, key: str) -> list[float]:
    """The values of one metric of a run, in logging order."""
    return [m.value for m in MlflowClient().get_metric_history(run_id, key)]


def download_artifact(run_id: str, path: str, dst: Path, *, missing_ok: bool = False) -> Path | None:
    """Download one artifact of a run into ``dst``; with ``missing_ok`` a missing one gives None."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))
    except (MlflowException, OSError):
        if missing_ok:
            return None
        raise


def run_status(run_id: str) -> str:
    return RunStatus.to_string(RunStatus.from_string(MlflowClient().get_run(run_id).info.status))


def mlflow_error_line(exc: BaseException) -> str | None:
    """One line for an MLflow error medtune did not foresee (None when ``exc`` is not one)."""
    if not isinstance(exc, MlflowException):
        return None
    return f"MLflow ({tracking_uri()}): {' '.join(exc.message.split())[:300]}"
