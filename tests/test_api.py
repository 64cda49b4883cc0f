"""`import medtune` for notebooks: the documented example runs, on the CLI's code paths."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import medtune
from medtune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_import_is_light_and_documented():
    code = (
        "import sys, medtune; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'mlflow', 'optuna')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", "nothing heavy until a function is called"
    for name in ("main", "split", "search", "train", "load"):
        assert getattr(medtune, name).__doc__ and callable(getattr(medtune, name)), name
    importlib.import_module("medtune.hpo.engines")  # the engine package is not the notebook function
    assert medtune.search is medtune.api.search
    assert set(medtune.__all__) >= {"main", "split", "search", "train", "load", "Model"}


def test_api_errors_are_the_cli_errors(project):
    with pytest.raises(ConfigError, match="at least 10 % must be left for training"):
        medtune.split(val_fraction=0.9, test_fraction=0.5)
    with pytest.raises(ConfigError, match="models:/nothing@champion: not found"):
        medtune.load("models:/nothing@champion")


@pytest.mark.slow
def test_notebook_example_runs_and_its_model_predicts_and_explains(project):
    example = REPO / "docs" / "notebook_example.py"
    proc = subprocess.run(
        [sys.executable, str(example)], env=project.env, cwd=project.home, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "best trial" in proc.stdout and "Grad-CAM overlay saved to" in proc.stdout
    client = MlflowClient(project.tracking_uri)
    exp = client.get_experiment_by_name("medtune-synthetic")
    steps = sorted({r.data.tags["medtune.step"] for r in client.search_runs([exp.experiment_id])})
    assert steps == ["search", "split", "train", "trial"], "the same runs as the CLI logs"

    # the model object on its own: paths, arrays and PIL images; the overlay is an RGB picture
    from PIL import Image

    model = medtune.load("models:/medtune-synthetic@champion")  # the first version of a new model is the champion
    files = sorted((project.home / ".medtune" / "cache" / "synthetic").rglob("*.png"))[:3]
    frame = model.predict(files)
    assert list(frame["image"]) == [str(f) for f in files] and set(frame["label"]) <= set(model.classes)
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    assert probs.shape == (3, len(model.classes)) and np.allclose(probs.sum(1), 1, atol=1e-4)
    as_array = model.predict(np.asarray(Image.open(files[0]).convert("RGB")))
    assert as_array["label"][0] == frame["label"][0] and as_array["image"][0] == 0
    overlay = model.explain(Image.open(files[0]))
    assert overlay.mode == "RGB" and overlay.size == (model.image_size, model.image_size)
    assert Image.open(project.home / "gradcam_example.png").size == overlay.size
