"""Long steps show progress: a bar on a terminal, plain lines elsewhere; each run keeps its console."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_progress_is_a_few_plain_lines_with_an_eta(monkeypatch, caplog):
    monkeypatch.delenv("MEDTUNE_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger="medtune.progress")
    with progress.Counter("validating files", 0, "file", stream=io.StringIO()) as bar:
        for i in range(1, 101):
            bar.to(i, 100)
    lines = [r.getMessage() for r in caplog.records]
    assert 10 <= len(lines) <= 11, lines  # every 10 %, not every file
    assert lines[0].startswith("validating files: 10/100 files (10%)") and "ETA" in lines[0]
    assert lines[-1].startswith("validating files: 100/100 files (100%)") and "ETA" not in lines[-1]
    assert all("\r" not in line for line in lines)


def test_on_a_terminal_progress_is_a_bar(monkeypatch, caplog):
    monkeypatch.delenv("MEDTUNE_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger="medtune.progress")
    screen = _Terminal()
    with progress.Counter("trials", 4, "trial", stream=screen) as bar:
        for _ in range(4):
            time.sleep(0.15)  # tqdm redraws at most every 0.1 s
            bar.update(1, postfix="best 0.8100")
    assert "\r" in screen.getvalue() and "trials" in screen.getvalue() and "4/4" in screen.getvalue()
    assert "best 0.8100" in screen.getvalue()
    assert not caplog.records, "no duplicate log lines under a bar"


def test_eta_and_durations_read_as_text():
    assert progress.duration(42) == "42 s" and progress.duration(200) == "3 min 20 s"
    assert progress.duration(3900) == "1 h 05 min"
    bar = progress.Counter("epochs", 10, "epoch", lines=False, stream=io.StringIO())
    bar.t0 -= 30  # three epochs in 30 s
    bar.update(3)
    assert bar.eta() == "ETA 1 min 10 s"


def _run_on_a_terminal(cmd: list[str], env: dict, cwd: Path, timeout: float = 300) -> str:
    """Run ``cmd`` with a pseudo-terminal as stdout and stderr; return everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def test_split_shows_a_bar_on_a_terminal_and_lines_in_a_log_and_saves_its_console(project):
    env = {k: v for k, v in project.env.items() if k != "MEDTUNE_PROGRESS"}
    medtune = str(Path(sys.executable).parent / "medtune")
    plain = subprocess.run(
        [medtune, "split", "--image-size", "32"], env=env, cwd=project.home, capture_output=True, text=True, timeout=300
    )
    assert plain.returncode == 0, plain.stderr
    assert "validating files: 160/160 files (100%)" in plain.stderr and "\r" not in plain.stderr
    assert "{" not in plain.stderr, "log lines are text, not dicts"

    fresh = {**env, "MEDTUNE_CACHE_DIR": str(project.home / "cache2")}  # nothing known: every file decoded
    screen = _run_on_a_terminal([medtune, "split", "--image-size", "40", "--new-run"], fresh, project.home)
    assert "validating files" in screen and "\r" in screen and "file/s" in screen
    assert "validating files: 160/160" not in screen, "a bar, not the plain lines"

    client = MlflowClient(project.tracking_uri)
    exp = client.get_experiment_by_name("medtune-synthetic")
    runs = client.search_runs([exp.experiment_id], "tags.`medtune.step` = 'split'")
    assert len(runs) == 2
    for run in runs:
        console = Path(client.download_artifacts(run.info.run_id, "console.log", str(project.home / run.info.run_id)))
        text = console.read_text()
        assert "Scanning" in text and f"MLflow run {run.info.run_id} (split)" in text


@pytest.mark.parametrize("mode, bars", [("lines", False), ("bar", True)])
def test_medtune_progress_forces_the_mode(monkeypatch, mode, bars):
    monkeypatch.setenv("MEDTUNE_PROGRESS", mode)
    assert progress.use_bars(io.StringIO()) is bars
