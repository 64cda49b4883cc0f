"""Step runs and their lifecycle: the one owner of ``MLFLOW_RUN_ID`` (the ``mlflow run`` launcher run).

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
import fcntl
import logging
import os
import signal
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.processes import pid_alive
from medtune.tracking.console import save_console
from medtune.tracking.logger import RunLogger, one_line, status_for
from medtune.tracking.store import (
    TAG_DATASET,
    TAG_ERROR,
    TAG_HOST,
    TAG_PID,
    TAG_STEP,
    ensure_experiment,
    experiment_name,
)

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def install_signal_handlers() -> None:
    """Turn SIGTERM into :class:`Interrupted` so runs end KILLED instead of staying RUNNING."""

    def _handler(signum, frame):  # noqa: ARG001
        raise Interrupted(f"received signal {signum}")

    signal.signal(signal.SIGTERM, _handler)


def process_tags() -> dict[str, str]:
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}


def end_orphaned_runs(experiment_id: str) -> list[str]:
    """End KILLED the RUNNING runs started on this host by processes that no longer exist.

    The ``mlflow run`` launcher run such a run had linked (``medtune.launcher_run_id``, in another
    experiment) is ended KILLED with it: ``kill -9`` of the whole ``mlflow run`` leaves neither
    RUNNING once any step of the dataset starts again.
    """
    client = MlflowClient()
    host = socket.gethostname()
    ended = []
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        pid = int(tags[TAG_PID])
        if pid == os.getpid() or pid_alive(pid):
            continue
        ended += end_with_launcher(client, run.info.run_id, f"process {pid} died without ending this run")
    if ended:
        log.warning("Ended %d orphaned run(s) KILLED: %s", len(ended), ", ".join(ended))
    return ended


def claim_run(run_id: str):
    """An exclusive lock on reopening ``run_id`` on this host (an open file; closing it, or the
    process's death, releases it), or None when another live process holds it."""
    folder = Path(tempfile.gettempdir()) / "medtune-run-claims"
    folder.mkdir(exist_ok=True)
    handle = open(folder / f"{run_id}.lock", "w")  # noqa: SIM115 - held until the step ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def end_if_running(client: MlflowClient, run_id: str, reason: str) -> bool:
    """End ``run_id`` KILLED with ``reason`` if it is still RUNNING; True when it was."""
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_tag(run_id, TAG_ERROR, reason)
        client.set_terminated(run_id, "KILLED")
    except MlflowException:  # deleted, or in a store this client cannot reach
        return False
    return True


def end_with_launcher(client: MlflowClient, run_id: str, reason: str) -> list[str]:
    """End ``run_id`` KILLED if it is still RUNNING, and the `mlflow run` launcher run it linked
    (``medtune.launcher_run_id``, in another experiment); the ids ended."""
    if not end_if_running(client, run_id, reason):
        return []
    launcher_id = client.get_run(run_id).data.tags.get("medtune.launcher_run_id")
    return [run_id] + ([launcher_id] if launcher_id and end_if_running(client, launcher_id, reason) else [])


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
        with contextlib.suppress(MlflowException):
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
        except MlflowException:
            launcher = None
    while mlflow.active_run() is not None:  # e.g. a previous step of `main`
        mlflow.end_run()
    all_tags = {TAG_STEP: step, TAG_DATASET: dataset, **process_tags(), **(tags or {})}
    pipeline = _PIPELINE_RUN.get()
    if pipeline:  # a step of `main`: shown nested under the pipeline's run
        all_tags.update({"mlflow.parentRunId": pipeline, "medtune.pipeline_run_id": pipeline})
    resume_id, claim = None, None
    if resume_filter:
        previous = client.search_runs(
            [experiment_id],
            filter_string=f"{resume_filter} and attributes.status != 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=10,
        )
        for candidate in previous:  # two workers restarted together never reopen the same run
            claim = claim_run(candidate.info.run_id)
            if claim is not None:
                resume_id = candidate.info.run_id
                break
    adopted = resume_id is None and launcher is not None and launcher.info.experiment_id == experiment_id
    if resume_id:
        with _experiment_active(experiment_id):
            run = mlflow.start_run(run_id=resume_id)
        log.info("Resuming run %s", resume_id)
    elif adopted:
        with _experiment_active(experiment_id):
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
        if claim is not None:
            claim.close()
        if launcher is not None and not adopted:
            with contextlib.suppress(Exception):
                client.set_terminated(launcher_id, status)
        if launcher is not None:
            # Later steps (the `main` pipeline) must not adopt a run that is already ended.
            os.environ.pop("MLFLOW_RUN_ID", None)


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


@contextlib.contextmanager
def _experiment_active(experiment_id: str):
    """Make ``experiment_id`` the active experiment while a run of it is reopened, then restore the caller's.

    MLflow refuses to reopen a run of another experiment than the process's active one (a notebook's
    ``set_experiment``), and ``set_experiment`` also exports ``MLFLOW_EXPERIMENT_ID`` to every child
    process: both are put back as they were.
    """
    from mlflow.tracking import fluent

    before, before_env = fluent._active_experiment_id, os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.set_experiment(experiment_id=experiment_id)
    try:
        yield
    finally:
        fluent._active_experiment_id = before
        if before_env is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = before_env


def take_launcher() -> str | None:
    """The ``mlflow run`` launcher run's id, taken from ``MLFLOW_RUN_ID`` (so no later step adopts it)."""
    return os.environ.pop("MLFLOW_RUN_ID", None)


def tag_launcher(launcher_id: str | None, tags: Mapping[str, Any]) -> None:
    """Copy a step's outcome onto the ``mlflow run`` launcher run (``main`` links its launcher so)."""
    if not launcher_id:
        return
    client = MlflowClient()
    try:
        for key, value in tags.items():
            client.set_tag(launcher_id, key, str(value))
    except MlflowException as exc:
        log.warning("could not link the launcher run %s: %s", launcher_id, exc)


def end_launcher_run(note: str) -> None:
    """End the ``mlflow run`` launcher run now (a command that records nothing), so it is never left RUNNING."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id:
        client = MlflowClient()
        client.set_tag(run_id, "medtune.note", note)
        client.set_terminated(run_id, "FINISHED")
