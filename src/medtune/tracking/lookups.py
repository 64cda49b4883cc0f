"""Lookups that fail in one line: a run or model the user named, and what exists instead."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.errors import ConfigError
from medtune.tracking.store import TAG_DATASET, TAG_STEP, experiment_name, tracking_uri


def existing_models(limit: int = 10) -> str:
    """The registered models and their aliases, in one line (for an error about a model URI)."""
    try:
        models = MlflowClient().search_registered_models(max_results=limit)
    except MlflowException:
        return f"the registry of {tracking_uri()} cannot be read"
    if not models:
        return f"no model is registered in {tracking_uri()} (train one: medtune train --dataset <name>)"
    items = []
    for m in models:
        aliases = ", ".join(f"@{a} = v{v}" for a, v in sorted((m.aliases or {}).items()))
        latest = max((int(v.version) for v in (m.latest_versions or [])), default=0)
        items.append(f"{m.name} ({aliases or f'latest v{latest}, no alias'})")
    return "registered models: " + "; ".join(items)


def existing_runs(step: str, dataset: str | None = None, limit: int = 5) -> str:
    """The latest finished runs of ``step`` (of ``dataset``, or of any medtune experiment), in one line."""
    client = MlflowClient()
    try:
        if dataset:
            exp = client.get_experiment_by_name(experiment_name(dataset))
            ids = [exp.experiment_id] if exp is not None else []
        else:
            ids = [e.experiment_id for e in client.search_experiments() if e.name.startswith("medtune-")]
        runs = (
            client.search_runs(
                ids,
                filter_string=f"tags.`{TAG_STEP}` = '{step}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=limit,
            )
            if ids
            else []
        )
    except MlflowException:
        return f"the runs of {tracking_uri()} cannot be read"
    where = f"of {dataset}" if dataset else "in this store"
    if not runs:
        return f"there is no finished {step} run {where} ({tracking_uri()})"
    items = [f"{r.info.run_id} ({r.data.tags.get(TAG_DATASET, '?')}, {_when(r.info.start_time)})" for r in runs]
    return f"latest {step} runs {where}: " + ", ".join(items)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime((ms or 0) / 1000))


def get_step_run(run_id: str, step: str, option: str, dataset: str | None = None):
    """``client.get_run(run_id)``, or a one-line error naming ``option`` and the runs that exist."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(
            f"{option}={run_id}: no such run ({_first_line(exc)}); {existing_runs(step, dataset)}"
        ) from exc


def model_lookup_error(model_uri: str, exc: BaseException):
    """A one-line :class:`~medtune.errors.ConfigError` for a model URI MLflow could not resolve."""
    if model_uri.startswith("models:/"):
        what = existing_models()
    elif model_uri.startswith("runs:/"):
        what = existing_runs("train")
    elif "://" not in model_uri and not Path(model_uri).expanduser().exists():
        return ConfigError(
            f"model={model_uri}: no such file or folder (a model URI looks like "
            f"models:/<name>@champion or runs:/<run id>/model); {existing_models()}"
        )
    else:
        what = existing_models()
    return ConfigError(f"model={model_uri}: not found ({_first_line(exc)}); {what}")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    return text[:200] or type(exc).__name__
