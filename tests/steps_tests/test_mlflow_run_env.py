"""The user's own words on a pip-only machine: `mlflow run . -e search -P dataset=dermnet` (3 trials).

No `--env-manager`: MLflow reads `python_env: python_env.yaml` from the MLproject and builds a
virtualenv (pyenv's Python 3.11.7, medtune's `cpu` extra from PyPI) once, in a folder of this
test session, then runs the search there on a tiny DermNet look-alike (the real one is not
downloadable here): `train/` and `test/` with the 23 class names, spaces included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medtune.datasets.registry import DATASETS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _dermnet_lookalike(root: Path, per_class: dict[str, int]) -> int:
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 0
    for split, count in per_class.items():
        for k, cls in enumerate(DATASETS["dermnet"].classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
                pixels[8:32, 8:32, k % 3] = 40 + 9 * k  # a class-coloured patch: something to learn
                Image.fromarray(pixels).save(folder / f"{split}_{k:02d}_{i}.jpg", quality=90)
                n += 1
    return n


def test_literal_mlflow_run_builds_a_virtualenv_and_searches_dermnet(tmp_path):
    if shutil.which("pyenv") is None:
        pytest.skip("pyenv is not installed: MLflow's virtualenv manager needs it to provide Python 3.11.7")
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    n_images = _dermnet_lookalike(data / "dermnet", {"train": 6, "test": 2})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDTUNE_", "MLFLOW_")) and k != "PYTHONPATH"}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the `mlflow` of pip install mlflow
            "MEDTUNE_DATA_DIR": str(data),
            "MEDTUNE_HOME": str(home),  # runs, caches and optuna.db there, not in the checkout
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "MLFLOW_ENV_ROOT": str(tmp_path / "envs"),  # built once, by this test
            "PYTHONUNBUFFERED": "1",
            "PIP_NO_COMPILE": "1",  # pip byte-compiles every installed file; imports compile what they use
        }
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["mlflow", "run", ".", "-e", "search", "-P", "dataset=dermnet", "-P", "trials=3"],  # 10 by default: 130 s
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "Creating a new environment" in log and "Could not find Conda" not in log
    built = [line for line in log.splitlines() if "Running command" in line]
    print(f"mlflow run (env build + search of {n_images} images) took {seconds:.0f} s")

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("medtune-dermnet")
    search = client.search_runs([exp.experiment_id], "tags.`medtune.step` = 'search'")
    assert len(search) == 1 and search[0].info.status == "FINISHED", built
    run = search[0]
    searched_s = (run.info.end_time - run.info.start_time) / 1000
    print(f"of which the search itself {searched_s:.0f} s (the rest: building the environment, starting)")
    assert run.data.params["space"] == "cnn_cpu.yaml", "on CPU the planned default is the CPU space"
    assert int(run.data.metrics["trials_total"]) == int(run.data.params["trials"]) == 3
    assert run.data.tags.get("medtune.best_trial", "none") != "none"
    launcher = client.get_run(run.data.tags["medtune.launcher_run_id"])
    assert launcher.data.tags["mlflow.project.env"] == "virtualenv" and launcher.info.status == "FINISHED"
    split = client.search_runs([exp.experiment_id], "tags.`medtune.step` = 'split'")[0]
    assert int(split.data.params["n_classes"]) == 23  # class names with spaces, kept intact
