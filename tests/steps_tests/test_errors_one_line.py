"""Wrong inputs end in one line that names the URI, run or parameter and says what exists.

Each command runs as a user runs it (the console script, in an isolated project) and must stop
with exit code 2, one ``medtune: error:`` line, no traceback, and nothing logged on the way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, f"exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medtune: error: "), proc.stderr
    return lines[0]


def _image(home: Path) -> Path:
    from PIL import Image

    path = home / "x.jpg"
    Image.new("RGB", (32, 32), "white").save(path)
    return path


def _runs(project) -> list:
    client = MlflowClient(project.tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def test_predict_with_unknown_registered_model_names_the_uri_and_the_registry(project):
    image = _image(project.home)
    line = _one_line_error(
        project.medtune("predict", "--model", "models:/medtune-synthetic@champion", str(image), check=False)
    )
    assert "models:/medtune-synthetic@champion" in line and "no model is registered" in line

    client = MlflowClient(project.tracking_uri)  # a registry that holds something: the line lists it
    client.create_registered_model("medtune-synthetic")
    client.create_model_version("medtune-synthetic", source=(project.home / "nowhere").as_uri())
    client.set_registered_model_alias("medtune-synthetic", "champion", "1")
    line = _one_line_error(
        project.medtune("predict", "--model", "models:/medtune-synthetic@best", str(image), check=False)
    )
    assert "models:/medtune-synthetic@best" in line and "medtune-synthetic (@champion = v1)" in line


def test_predict_with_missing_path_says_no_such_file(project):
    line = _one_line_error(
        project.medtune("predict", "--model", "/nonexistent/path", str(_image(project.home)), check=False)
    )
    assert "model=/nonexistent/path: no such file or folder" in line


def test_evaluate_with_unknown_run_lists_the_latest_train_runs(project):
    uri = "runs:/0123456789abcdef0123456789abcdef/model"
    line = _one_line_error(project.medtune("evaluate", "--model-uri", uri, check=False))
    assert uri in line and "no finished train run" in line


def test_train_with_unknown_search_run_fails_before_any_split(project):
    line = _one_line_error(project.medtune("train", "--search-run", "deadbeef", check=False))
    assert "search_run=deadbeef: no such run" in line and "no finished search run of synthetic" in line
    assert _runs(project) == [], "nothing may be logged before the arguments are checked"


def test_train_on_an_empty_store_logs_no_split_run(project):
    line = _one_line_error(project.medtune("train", "--dataset", "synthetic", check=False))
    assert "no finished search" in line
    assert _runs(project) == []
    assert not (project.home / ".medtune" / "cache" / "synthetic").exists(), "no dataset generated either"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--val-fraction", "0.9", "--test-fraction", "0.5"], "at least 10 % must be left for training"),
        (["--val-fraction", "1.5"], "val_fraction=1.5: expected a fraction"),
    ],
)
def test_split_checks_fractions_before_generating_or_scanning(project, args, message):
    line = _one_line_error(project.medtune("split", *args, check=False))
    assert message in line
    assert not (project.home / ".medtune").exists(), "nothing generated, scanned or cached"
    assert _runs(project) == []
