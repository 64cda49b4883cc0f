"""`medtune split` on DICOM files and PNGs named by a labels table, several images per patient:
no patient straddles two splits, and no identifying value reaches anything the run leaves behind."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
from mlflow.tracking import MlflowClient

from medtune.datasets.synthetic import generate
from tests.dicom_files import dicom_bytes

PER_PATIENT = 3


def _identity(n: int) -> dict[str, str]:
    return {
        "PatientName": f"Quixote^Alonso{n}",
        "PatientID": f"PID-7731-{n:04d}",
        "PatientBirthDate": f"1947031{n}",
        "AccessionNumber": f"ACC-55120-{n}",
        "OtherPatientIDs": f"OPID-66{n}",
    }


def _dicom(pixels: np.ndarray, identity: dict[str, str]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels)))
    for tag, value in identity.items():
        setattr(ds, tag, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def hospital_export(tmp_path):
    """10 DICOM patients (patient from PatientID, some files without extension) and 6 PNG patients
    (patient from the table), 3 images each, two classes; a multi-frame file and a file with no row."""
    x, y, _ = generate(24, 40, seed=11)  # 24 phantoms of each of 4 kinds; kinds 0/1 -> class a/b
    grey = [np.ascontiguousarray(img[:, :, 0]) for img, kind in zip(x, y) if kind in (0, 1)]
    kinds = [int(kind) for kind in y if kind in (0, 1)]
    root = tmp_path / "export"
    (root / "dicom").mkdir(parents=True)
    (root / "png").mkdir()
    rows, truth, secrets = [], {}, []
    by_class = defaultdict(list)
    for pixels, kind in zip(grey, kinds):
        by_class["ab"[kind]].append(pixels)
    n = 0
    for label in "ab":
        images = by_class[label]
        for p in range(len(images) // PER_PATIENT):
            n += 1
            identity = _identity(n)
            as_png = p >= 5  # the first 5 patients of a class are DICOM files, the rest PNGs
            for i in range(PER_PATIENT):
                pixels = images[p * PER_PATIENT + i]
                if as_png:
                    path = f"png/{label}_{n}_{i}.png"
                    (root / path).write_bytes(_png(pixels))
                    rows.append(f"{path},{label},MRN-889{n:03d},")
                else:
                    path = f"dicom/{label}{n}_{i}" + (".dcm" if i else "")  # some exports carry no extension
                    (root / path).write_bytes(_dicom(pixels, identity))
                    rows.append(f"{path},{label},,")
                truth[path] = n
            secrets += [f"MRN-889{n:03d}"] if as_png else list(identity.values())
    (root / "dicom" / "cine.dcm").write_bytes(_dicom(np.stack(by_class["a"][:2]), _identity(99)))
    rows.append("dicom/cine.dcm,a,,")
    secrets += list(_identity(99).values())
    (root / "dicom" / "unlisted.dcm").write_bytes(_dicom(by_class["b"][0], _identity(98)))
    secrets += list(_identity(98).values())
    (root / "labels.csv").write_text("path,label,patient,split\n" + "\n".join(rows) + "\n")
    return root, truth, secrets


def _everything_logged(home: Path, run_id: str, tmp: Path) -> dict[str, bytes]:
    """Every file the run left in the project (tracking store, artifacts, caches, index) and
    every param, tag and metric name as the client reads them."""
    blobs = {str(p): p.read_bytes() for p in home.rglob("*") if p.is_file() and not p.name.endswith(".salt")}
    run = MlflowClient().get_run(run_id)
    blobs["params"] = json.dumps(run.data.params).encode()
    blobs["tags"] = json.dumps(run.data.tags).encode()
    blobs["metrics"] = json.dumps(sorted(run.data.metrics)).encode()
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp)))
    blobs.update({str(p): p.read_bytes() for p in artifacts.rglob("*") if p.is_file()})
    return blobs


def test_split_of_a_dicom_and_png_export_keeps_patients_whole_and_logs_no_patient_data(
    project, hospital_export, tmp_path
):
    root, truth, secrets = hospital_export
    out = project.medtune("split", "--dataset", str(root), "--labels", "labels.csv", "--image-size", "32", "-v")

    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("medtune-export").experiment_id])
    blobs = _everything_logged(project.home, run.info.run_id, tmp_path / "artifacts")
    blobs["console"] = (out.stdout + out.stderr).encode()
    assert any(name.endswith("console.log") for name in blobs), "the run's console log is among what is scanned"
    assert any(name.endswith("mlflow.db") for name in blobs)
    for secret in secrets:
        for variant in {secret, secret.replace("^", " "), secret.split("^")[0]}:
            leaked = [name for name, data in blobs.items() if variant.encode() in data]
            assert not leaked, f"{variant!r} reached {leaked}"

    manifest = pd.read_csv(tmp_path / "artifacts" / "manifest.csv", dtype=str, keep_default_na=False)
    report = json.loads((tmp_path / "artifacts" / "report.json").read_text())
    assert len(manifest) == len(truth) == 48 and set(manifest["path"]) == set(truth)
    manifest["who"] = manifest["path"].map(truth)
    splits_per_patient = manifest.groupby("who")["split"].nunique()
    assert (splits_per_patient == 1).all(), "a patient's images sit in two splits"
    assert (manifest.groupby("who")["patient"].nunique() == 1).all() and (manifest["patient"] != "").all()
    assert manifest["patient"].str.fullmatch(r"[0-9a-f]{16}").all(), "the manifest holds keyed patients only"
    expected = {s: int(manifest.loc[manifest["split"] == s, "who"].nunique()) for s in ("train", "val", "test")}
    assert report["patients"]["counts"] == expected and min(expected.values()) >= 1
    assert report["patients"]["total"] == 16
    assert {f"n_patients_{s}": float(v) for s, v in expected.items()}.items() <= run.data.metrics.items()
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "multi-frame" in skipped[str(root / "dicom" / "cine.dcm")]
    ignored = {s["path"]: s["reason"] for s in report["ignored_files"]}
    assert ignored[str(root / "dicom" / "unlisted.dcm")] == "no row in the labels table"
    assert run.data.params["labels"] == "labels.csv"


def test_a_bad_labels_table_stops_split_in_one_line_naming_the_file_and_line(project, tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "labels.csv").write_text("path,label\na.png,cat\n../../etc/passwd,dog\n")
    proc = project.medtune("split", "--dataset", str(root), "--labels", "labels.csv", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines == [
        f"medtune: error: labels file {root / 'labels.csv'} line 3: ../../etc/passwd is outside the dataset "
        f"folder {root}"
    ]
