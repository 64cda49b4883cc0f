"""``medtune main`` on a DICOM version of ``synthetic``: the window given to the split is the window the
registered model serves with."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medtune.datasets.synthetic import CLASSES, generate
from tests.dicom_files import dicom_bytes

pytestmark = pytest.mark.slow

WINDOW = "2040,4080"  # the 12-bit phantoms' whole range


def test_main_on_a_dicom_dataset_registers_a_model_that_serves_dicom_with_its_window(project, tmp_path):
    folder = tmp_path / "dicom_synthetic"
    x, y, _ = generate(12, 40, seed=0)
    for i, (image, label) in enumerate(zip(x, y)):
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        stored = image[:, :, 0].astype(np.uint16) * 16  # 12-bit values, no window in the files
        photometric = "MONOCHROME1" if i % 3 == 0 else "MONOCHROME2"
        pixels = 4095 - stored if photometric == "MONOCHROME1" else stored
        (folder / CLASSES[label] / f"IM{i:05d}").write_bytes(
            dicom_bytes(pixels, photometric=photometric, bits_stored=12, patient_id=f"P{i}")
        )
    project.medtune(
        "main", "--dataset", str(folder), "--window", WINDOW, "--space", "demo", "--trials", "1",
        "--search-epochs", "1", "--epochs", "1", "--image-size", "32", "--search-image-size", "32",
        timeout=600,
    )  # fmt: skip
    client = MlflowClient(project.tracking_uri)
    (version,) = client.search_model_versions("name = 'medtune-dicom_synthetic'")
    split = client.get_run(client.get_run(version.run_id).data.tags["medtune.split_run_id"])
    assert split.data.params["window"] == WINDOW
    model = mlflow.pyfunc.load_model(f"models:/medtune-dicom_synthetic/{version.version}")
    assert model.metadata.metadata["window"] == WINDOW
    files = sorted(p for p in folder.rglob("IM*"))[:4]
    out = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    assert len(out) == 4 and set(out["label"]) <= set(CLASSES)
