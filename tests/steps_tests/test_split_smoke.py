import pytest


@pytest.mark.slow
def test_split_entry_point_smoke(project):
    proc = project.mlflow_run("split", {"dataset": "synthetic", "image_size": 32})
    assert "split synthetic" in proc.stdout + proc.stderr
