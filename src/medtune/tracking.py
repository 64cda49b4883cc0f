"""The one module that talks to MLflow tracking.

Run-lifecycle policy (deliberate, see README "How medtune uses MLflow runs"):

* Every step (split, search, train, evaluate) logs to an experiment named ``medtune-<dataset>``.
* ``mlflow run`` creates a run of its own before medtune starts and passes its id as
  ``MLFLOW_RUN_ID``. If that launcher run already lives in the step's experiment (the user gave
  ``--experiment-name medtune-<dataset>``) medtune adopts it as the step run. Otherwise medtune
  starts its own run in ``medtune-<dataset>``, links the two with tags
  (``medtune.step_run_id`` on the launcher, ``medtune.launcher_run_id`` on the step run) and ends
  the launcher run with the step's status, so it is never left RUNNING even if ``mlflow run``
  itself is killed.
* SIGTERM is turned into :class:`Interrupted`; interrupted runs end KILLED, failed runs FAILED
  with a ``medtune.error`` tag. Runs orphaned by ``kill -9`` on this host are found at the next
  start (their recorded pid is gone) and ended KILLED.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from medtune import settings
from medtune.datasets.registry import safe_name

log = logging.getLogger(__name__)

TAG_STEP = "medtune.step"
TAG_DATASET = "medtune.dataset"
TAG_PID = "medtune.pid"
TAG_HOST = "medtune.host"
TAG_ERROR = "medtune.error"
MAX_PARAM_LEN = 6000


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def install_signal_handlers() -> None:
    """Turn SIGTERM into :class:`Interrupted` so runs end KILLED instead of staying RUNNING."""

    def _handler(signum, frame):  # noqa: ARG001
        raise Interrupted(f"received signal {signum}")

    signal.signal(signal.SIGTERM, _handler)


def default_tracking_uri() -> str:
    return f"sqlite:///{settings.project_dir() / 'mlflow.db'}"


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow at ``tracking_uri``, ``$MLFLOW_TRACKING_URI`` or the project's SQLite file."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # child processes (workers, servers) inherit it
    return uri


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
    except mlflow.exceptions.MlflowException:  # created concurrently by another worker
        return client.get_experiment_by_name(name).experiment_id


# ---------------------------------------------------------------- logging helpers


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
            text = _param_text(v)
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

    def tags(self, values: Mapping[str, Any]) -> None:
        items = [RunTag(str(k), _param_text(v)) for k, v in values.items()]
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


def _param_text(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict, tuple)) else str(v)
    return text[:MAX_PARAM_LEN]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


def status_for(exc: BaseException | None) -> str:
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"


def process_tags() -> dict[str, str]:
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}


# ---------------------------------------------------------------- the console, saved with each step


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


def save_console(run: RunLogger) -> None:
    """Log the console lines written since the previous step saved its own, as ``console.log``."""
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


# ---------------------------------------------------------------- run lifecycle


def end_orphaned_runs(experiment_id: str) -> list[str]:
    """End KILLED the RUNNING runs started on this host by processes that no longer exist."""
    client = MlflowClient()
    host = socket.gethostname()
    ended = []
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        pid = int(tags[TAG_PID])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        client.set_tag(run.info.run_id, TAG_ERROR, f"process {pid} died without ending this run")
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    if ended:
        log.warning("Ended %d orphaned run(s) KILLED: %s", len(ended), ", ".join(ended))
    return ended


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


_PIPELINE_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("medtune_pipeline_run", default=None)


@contextlib.contextmanager
def pipeline_run(
    dataset: str, *, run_name: str, launcher_id: str | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[RunLogger]:
    """The run of ``main`` in the dataset's experiment; every step run opened inside is its child.

    Ends FINISHED, FAILED (with a ``medtune.error`` tag) or KILLED as the pipeline ends; the
    ``mlflow run`` launcher run, if any, is linked both ways (``medtune.pipeline_run_id``).
    """
    experiment_id = ensure_experiment(dataset)
    client = MlflowClient()
    all_tags = {TAG_STEP: "main", TAG_DATASET: dataset, **process_tags(), **(tags or {})}
    if launcher_id:
        all_tags["medtune.launcher_run_id"] = launcher_id
    run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
    run_id = run.info.run_id
    if launcher_id:
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.set_tag(launcher_id, "medtune.pipeline_run_id", run_id)
    log.info("MLflow run %s (main) in experiment %s", run_id, experiment_name(dataset))
    token = _PIPELINE_RUN.set(run_id)
    error: BaseException | None = None
    try:
        yield RunLogger(run_id, client)
    except BaseException as exc:
        error = exc
        raise
    finally:
        _PIPELINE_RUN.reset(token)
        with contextlib.suppress(Exception):
            if error is not None:
                client.set_tag(run_id, TAG_ERROR, one_line(error))
            client.set_terminated(run_id, status_for(error))


@contextlib.contextmanager
def step_run(
    dataset: str,
    step: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    resume_filter: str | None = None,
) -> Iterator[RunLogger]:
    """Open the run of one medtune step and always end it with the right status.

    With ``resume_filter`` (an MLflow filter string), the newest ended run matching it is
    reopened instead of starting a new one (a resumed search keeps its parent run).

    Adopts or links the ``mlflow run`` launcher run (see module docstring), makes the run the
    active fluent run (so ``mlflow.log_input`` and model logging work), and on exit ends it
    FINISHED, FAILED (with a ``medtune.error`` tag) or KILLED.
    """
    experiment_id = ensure_experiment(dataset)
    end_orphaned_runs(experiment_id)
    client = MlflowClient()
    launcher_id = os.environ.pop("MLFLOW_RUN_ID", None)
    launcher = None
    if launcher_id:
        try:
            launcher = client.get_run(launcher_id)
        except mlflow.exceptions.MlflowException:
            launcher = None
    while mlflow.active_run() is not None:  # e.g. a previous step of `main`
        mlflow.end_run()
    all_tags = {TAG_STEP: step, TAG_DATASET: dataset, **process_tags(), **(tags or {})}
    pipeline = _PIPELINE_RUN.get()
    if pipeline:  # a step of `main`: shown nested under the pipeline's run
        all_tags.update({"mlflow.parentRunId": pipeline, "medtune.pipeline_run_id": pipeline})
    resume_id = None
    if resume_filter:
        previous = client.search_runs(
            [experiment_id],
            filter_string=f"{resume_filter} and attributes.status != 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        resume_id = previous[0].info.run_id if previous else None
    adopted = resume_id is None and launcher is not None and launcher.info.experiment_id == experiment_id
    # MLflow refuses to reopen a run while another experiment is the process's active one
    mlflow.set_experiment(experiment_id=experiment_id)
    if resume_id:
        run = mlflow.start_run(run_id=resume_id)
        log.info("Resuming run %s", resume_id)
    elif adopted:
        run = mlflow.start_run(run_id=launcher_id)
        if run_name:
            client.set_tag(run.info.run_id, "mlflow.runName", run_name)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name or step)
    logger = RunLogger(run.info.run_id, client)
    if launcher is not None and not adopted:
        all_tags["medtune.launcher_run_id"] = launcher_id
        client.set_tag(launcher_id, "medtune.step_run_id", run.info.run_id)
        client.set_tag(
            launcher_id, "medtune.note", f"medtune logged this step in experiment {experiment_name(dataset)}"
        )
    logger.tags(all_tags)
    log.info("MLflow run %s (%s) in experiment %s", run.info.run_id, step, experiment_name(dataset))
    error: BaseException | None = None
    try:
        yield logger
    except BaseException as exc:
        error = exc
        raise
    finally:
        status = status_for(error)
        if error is not None:
            with contextlib.suppress(Exception):
                client.set_tag(run.info.run_id, TAG_ERROR, one_line(error))
                log.error("%s failed: %s", step, one_line(error))  # the reason is in console.log too
        with contextlib.suppress(Exception):
            save_console(logger)
        with contextlib.suppress(Exception):
            mlflow.flush_async_logging()
        mlflow.end_run(status)
        if launcher is not None and not adopted:
            with contextlib.suppress(Exception):
                client.set_terminated(launcher_id, status)
        if launcher is not None:
            # Later steps (the `main` pipeline) must not adopt a run that is already ended.
            os.environ.pop("MLFLOW_RUN_ID", None)


@contextlib.contextmanager
def child_run(
    parent: RunLogger,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Iterator[RunLogger]:
    """A nested run under ``parent`` (client API, so no fluent state is touched).

    Ends FINISHED on success, KILLED on interruption, FAILED otherwise; a caller that wants
    another final status (e.g. a pruned trial) calls ``logger.end(...)`` itself first.
    """
    client = parent.client
    if run_id is None:
        run = client.create_run(
            experiment_id,
            run_name=run_name,
            tags={"mlflow.parentRunId": parent.run_id, **process_tags(), **(tags or {})},
        )
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    logger = RunLogger(run_id, client)
    error: BaseException | None = None
    try:
        yield logger
    except BaseException as exc:
        error = exc
        raise
    finally:
        current = client.get_run(run_id).info.status
        if current == "RUNNING":
            if error is not None:
                with contextlib.suppress(Exception):
                    client.set_tag(run_id, TAG_ERROR, one_line(error))
            client.set_terminated(run_id, status_for(error))


@contextlib.contextmanager
def launcher_set_aside():
    """Hide ``MLFLOW_RUN_ID`` (the ``mlflow run`` launcher run) from the steps run inside the block.

    Used where a step starts another one the user did not ask for (the automatic split of a
    dataset never split before): the launcher run belongs to the step the user asked for.
    """
    value = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        yield value
    finally:
        if value is not None:
            os.environ["MLFLOW_RUN_ID"] = value


def link_launcher(step_run_id: str, note: str) -> None:
    """When a step reuses an earlier run instead of starting one, point the `mlflow run` run at it."""
    launcher_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if launcher_id:
        client = MlflowClient()
        client.set_tag(launcher_id, "medtune.step_run_id", step_run_id)
        client.set_tag(launcher_id, "medtune.note", note)


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


def download_artifact(run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def run_status(run_id: str) -> str:
    return RunStatus.to_string(RunStatus.from_string(MlflowClient().get_run(run_id).info.status))


# ---------------------------------------------------------------- lookups that fail in one line


def existing_models(limit: int = 10) -> str:
    """The registered models and their aliases, in one line (for an error about a model URI)."""
    try:
        models = MlflowClient().search_registered_models(max_results=limit)
    except mlflow.exceptions.MlflowException:
        return f"the registry of {mlflow.get_tracking_uri()} cannot be read"
    if not models:
        return f"no model is registered in {mlflow.get_tracking_uri()} (train one: medtune train --dataset <name>)"
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
    except mlflow.exceptions.MlflowException:
        return f"the runs of {mlflow.get_tracking_uri()} cannot be read"
    where = f"of {dataset}" if dataset else "in this store"
    if not runs:
        return f"there is no finished {step} run {where} ({mlflow.get_tracking_uri()})"
    items = [f"{r.info.run_id} ({r.data.tags.get(TAG_DATASET, '?')}, {_when(r.info.start_time)})" for r in runs]
    return f"latest {step} runs {where}: " + ", ".join(items)


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime((ms or 0) / 1000))


def get_step_run(run_id: str, step: str, option: str, dataset: str | None = None):
    """``client.get_run(run_id)``, or a one-line error naming ``option`` and the runs that exist."""
    from medtune.errors import ConfigError

    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise ConfigError(
            f"{option}={run_id}: no such run ({_first_line(exc)}); {existing_runs(step, dataset)}"
        ) from exc


def model_lookup_error(model_uri: str, exc: BaseException):
    """A one-line :class:`~medtune.errors.ConfigError` for a model URI MLflow could not resolve."""
    from medtune.errors import ConfigError

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
