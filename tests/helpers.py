"""Helpers shared by the tests: an isolated project, SQLite stores, `mlflow run`, real data, Grad-CAM scores.

Plain functions and classes, imported as ``from tests.helpers import ...``; the fixtures built on
them live in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$MEDTUNE_SHARED_DATA``."""
    env = os.environ.get("MEDTUNE_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data").resolve()


def require_shared(name: str) -> Path:
    path = shared_data_dir() / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (set MEDTUNE_SHARED_DATA to the folder holding {name}/)")
    return path


ISOLATED_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MEDTUNE_SYNTHETIC": "40,48",  # 160 images of 48 px: fast, still learnable
    "MEDTUNE_HEARTBEAT": "2,4",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONUNBUFFERED": "1",
}


def activate_project(mp: pytest.MonkeyPatch, home: Path) -> Project:
    """Point this process (through ``mp``) and the returned subprocess env at an isolated home."""
    env = {**ISOLATED_ENV, "MEDTUNE_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    for key, value in env.items():
        mp.setenv(key, value)
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    mp.chdir(home)
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    full_env = {**os.environ, **env}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    return Project(home, full_env, env["MLFLOW_TRACKING_URI"])


def use_sqlite_store(mp: pytest.MonkeyPatch, root: Path, experiment: str) -> str:
    """Point MLflow (this process, through ``mp``) at a fresh SQLite store; returns a new experiment id."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return MlflowClient().create_experiment(experiment, artifact_location=(root / "mlruns").as_uri())


@contextlib.contextmanager
def sqlite_store(root: Path, experiment: str):
    """A fresh SQLite store for a module-scoped fixture: yields (monkeypatch, experiment id); restores MLflow's URI."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    try:
        with pytest.MonkeyPatch.context() as mp:
            yield mp, use_sqlite_store(mp, root, experiment)
    finally:
        mlflow.set_tracking_uri(previous)


class Project:
    def __init__(self, home: Path, env: dict, tracking_uri: str):
        self.home, self.env, self.tracking_uri = home, env, tracking_uri

    def mlflow_run(self, entry: str, params: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        return mlflow_run(self, entry, params, **kwargs)

    def medtune(self, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
        """The console script in a subprocess, in the isolated project."""
        cmd = [str(Path(sys.executable).parent / "medtune"), *args]
        proc = subprocess.run(cmd, env=self.env, cwd=self.home, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
            )
        return proc


def mlflow_run(
    project,
    entry: str,
    params: dict | None = None,
    *,
    timeout: int = 600,
    check: bool = True,
    experiment: str | None = None,
) -> subprocess.CompletedProcess:
    """``mlflow run <repo> --env-manager local -e <entry> -P k=v ...`` in the isolated project."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", entry]
    if experiment:
        cmd += ["--experiment-name", experiment]
    for key, value in (params or {}).items():
        cmd += ["-P", f"{key}={value}"]
    proc = subprocess.run(cmd, env=project.env, cwd=project.home, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def lesion_focus(heatmaps, masks) -> tuple[float, float]:
    """Mean Grad-CAM concentration on each image's own lesion, and on other images' lesions (the control).

    `synthetic` lesions cluster near the image centre, so a heatmap that merely favours the centre
    already scores well against its own mask (a fixed box over the middle ninth scores about 6).
    The control scores every heatmap against the masks of up to 10 other images: the same
    position statistics, no link to what the image shows. Looking at the lesion means beating it.
    """
    import numpy as np

    from medtune.explain import heatmap_concentration

    n = len(heatmaps)
    own = np.nanmean([heatmap_concentration(h, m) for h, m in zip(heatmaps, masks)])
    shifts = range(1, min(n, 11))
    control = np.nanmean([heatmap_concentration(heatmaps[i], masks[(i + s) % n]) for i in range(n) for s in shifts])
    return float(own), float(control)


def transfer_lesion_focus(backbone: str, weights, size: int, epochs: int, min_accuracy: float) -> tuple[float, float]:
    """Fine-tune ``backbone`` on `synthetic` phantoms in medtune's two stages; :func:`lesion_focus` of its Grad-CAM.

    450 training and 150 test phantoms at ``size`` px; 3 head epochs, then the top 60 layers at a
    tenth of the rate. The test images it classifies correctly (at least ``min_accuracy``) are explained.
    """
    import keras
    import numpy as np

    from medtune import training
    from medtune.datasets.synthetic import generate
    from medtune.explain import gradcam
    from medtune.models import build_model

    training.configure_threads()
    x, y, masks = generate(150, size, seed=3)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:450], order[450:]
    keras.utils.set_random_seed(0)
    params = {
        "dropout": 0.0,
        "backbone": backbone,
        "dense_units": 128,
        "fine_tune_layers": 60,
        "fine_tune_lr_factor": 0.1,
        "head_epochs": 3,
        "learning_rate": 1e-3,
        "optimizer": "adam",
    }
    model = training.compile_model(build_model(params, (size, size, 3), 4, weights=weights), params)
    history = training.fit_stages(
        model,
        params,
        training.make_dataset(x[train], y[train], 4, 32, training=True, seed=0),
        training.make_dataset(x[test], y[test], 4, 64, training=False),
        y_val=y[test],
        epochs=epochs,
    )
    assert set(history["stage"]) == {1, 2}
    correct = training.predict_proba(model, x[test]).argmax(1) == y[test]
    assert correct.mean() >= min_accuracy, correct.mean()
    heat, _ = gradcam(model, x[test][correct], class_indices=y[test][correct])
    assert heat.shape[1:] == (size, size)
    training.release_model(model)
    return lesion_focus(heat, masks[test][correct])


def image_record(path: str, label: str, source: str = "train", *, sha: str | None = None, phash: str | None = None):
    """A fabricated :class:`~medtune.datasets.records.ImageRecord` (no file behind it).

    Its sha256 and phash derive from ``path`` unless given: unrelated records are ~32 bits apart.
    """
    import hashlib

    from medtune.datasets.records import ImageRecord

    return ImageRecord(
        path=path,
        label=label,
        source=source,
        sha256=sha or hashlib.sha256(path.encode()).hexdigest(),
        phash=phash or hashlib.sha256(("phash" + path).encode()).hexdigest()[:16],
        width=8,
        height=8,
        mode="L",
    )


def near_phash(phash: str, bits: int = 1) -> str:
    """``phash`` with its lowest ``bits`` bits flipped: a near duplicate ``bits`` away."""
    return f"{int(phash, 16) ^ ((1 << bits) - 1):016x}"


def write_phantom(path: Path | str, seed: int, size: int = 48, fmt: str = "PNG", label: str = "ring", **save) -> str:
    """Write the synthetic phantom ``(label, seed)`` at ``size`` px to ``path``; the same seed gives the same picture.

    Near duplicates for the pixel check: the same seed saved as another format (``fmt="JPEG",
    quality=80``) is a re-encoded copy. Returns the path as a string.
    """
    import numpy as np
    from PIL import Image

    from medtune.datasets.synthetic import generate_phantom

    image, _ = generate_phantom(label, np.random.default_rng(seed), size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt, **save)
    return str(path)


def two_param_space(tmp_path: Path):
    """A space of two parameters (``filters`` 16/32, ``dense_units`` 4..8) for engine tests with a stand-in trainer."""
    from medtune.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n  filters: {type: categorical, choices: [16, 32], default: 16}\n"
        "  dense_units: {type: int, low: 4, high: 8, default: 8}\n"
    )
    return load_space(path)
