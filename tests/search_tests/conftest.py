"""Helpers for the search tests: read the MLflow store back, run and watch a search process.

Everything runs in the isolated home of the ``project`` fixture (tests/conftest.py): the small
synthetic set (160 images of 48 px), 32 px caches, SQLite MLflow and Optuna stores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXPERIMENT = "medtune-synthetic"
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")
TRIAL_IMAGES = ("learning_curves.png", "confusion_matrix.png", "gradcam.png")


class Store:
    """The project's MLflow tracking store, read back with the client API."""

    EXPERIMENT = EXPERIMENT
    EPOCH_METRICS = EPOCH_METRICS
    TRIAL_IMAGES = TRIAL_IMAGES

    def __init__(self, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.client.search_experiments()  # create the tables now, not concurrently with a subprocess

    def experiment_id(self, name: str = EXPERIMENT) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else None

    def runs(self, filter_string: str = "", experiment: str | None = EXPERIMENT) -> list:
        """Runs of one experiment (``experiment=None``: of every experiment)."""
        from mlflow.entities import ViewType

        if experiment is None:
            ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        else:
            exp_id = self.experiment_id(experiment)
            ids = [exp_id] if exp_id is not None else []
        if not ids:
            return []
        return self.client.search_runs(ids, filter_string=filter_string, run_view_type=ViewType.ALL, max_results=1000)

    def searches(self, study: str | None = None) -> list:
        flt = "tags.`medtune.step` = 'search'"
        if study:
            flt += f" and tags.`medtune.study` = '{study}'"
        return self.runs(flt)

    def trials(self, study: str | None = None, parent: str | None = None) -> list:
        flt = "tags.`medtune.step` = 'trial'"
        if study:
            flt += f" and tags.`medtune.study` = '{study}'"
        if parent:
            flt += f" and tags.`mlflow.parentRunId` = '{parent}'"
        return sorted(self.runs(flt), key=lambda r: int(r.data.tags["medtune.trial"]))

    def running(self) -> list:
        """Every run of every experiment still RUNNING (should be none once a process has ended)."""
        return [r for r in self.runs(experiment=None) if r.info.status == "RUNNING"]

    def artifacts(self, run_id: str, path: str | None = None) -> set[str]:
        """Artifact paths of a run, recursively."""
        out = set()
        for info in self.client.list_artifacts(run_id, path):
            if info.is_dir:
                out |= self.artifacts(run_id, info.path)
            else:
                out.add(info.path)
        return out

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def describe(self) -> str:
        """All runs, one line each (for assertion messages)."""
        lines = []
        for r in self.runs(experiment=None):
            t = r.data.tags
            lines.append(
                f"{r.info.run_id[:8]} {r.info.status:8} {t.get('medtune.step', '-'):7} trial={t.get('medtune.trial', '-')} "
                f"state={t.get('medtune.trial_state', '-')} error={t.get('medtune.error', '-')}"
            )
        return "\n".join(lines)


@pytest.fixture
def store(project) -> Store:
    return Store(project.tracking_uri)


def medtune_command(*args: str) -> list[str]:
    """The console script, exactly as ``Project.medtune`` runs it."""
    return [str(Path(sys.executable).parent / "medtune"), *args]


class Background:
    """``medtune ...`` started with Popen in the project (output to a file, read at the end)."""

    def __init__(self, project, *args: str):
        self.log = project.home / f"medtune-{time.monotonic_ns()}.log"
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen(
            medtune_command(*args),
            env=project.env,
            cwd=project.home,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.proc.pid

    def output(self) -> str:
        self._fh.flush()
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, predicate, timeout: float = 240, interval: float = 0.3):
        """Poll ``predicate()`` until it returns something truthy; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"medtune ended ({self.proc.returncode}) before {what}:\n{self.output()[-5000:]}")
            time.sleep(interval)
        self.kill()
        pytest.fail(f"timed out waiting for {what}:\n{self.output()[-5000:]}")

    def signal(self, signum: int, timeout: float = 120) -> int:
        os.kill(self.pid, signum)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"medtune did not end within {timeout} s of signal {signum}:\n{self.output()[-5000:]}")

    def kill(self) -> None:
        """SIGKILL the process if it still runs (teardown) and close its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        if not self._fh.closed:
            self._fh.close()


@pytest.fixture
def background(project):
    """Start ``medtune`` in the background; every process started is killed at teardown."""
    started: list[Background] = []

    def start(*args: str) -> Background:
        bg = Background(project, *args)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.kill()
