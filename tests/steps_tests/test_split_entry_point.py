"""The split entry point end to end through `mlflow run`, read back from the tracking store."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def _split_runs(dataset: str):
    client = MlflowClient()
    exp = client.get_experiment_by_name(f"medtune-{dataset}")
    assert exp is not None, f"experiment medtune-{dataset} missing"
    return client.search_runs(
        [exp.experiment_id], "tags.`medtune.step` = 'split'", order_by=["attributes.start_time ASC"]
    )


def _artifacts(run_id: str, tmp: Path) -> tuple[pd.DataFrame, dict]:
    manifest = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="manifest.csv", dst_path=str(tmp)),
        dtype=str,
        keep_default_na=False,
    )
    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report.json", dst_path=str(tmp))
        ).read_text()
    )
    return manifest, report


def _no_run_left_running():
    client = MlflowClient()
    for exp in client.search_experiments():
        running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
        assert not running, f"runs left RUNNING in {exp.name}: {[r.info.run_id for r in running]}"


def test_split_synthetic_is_tracked_and_cache_reused(project, tmp_path):
    project.mlflow_run("split", {"dataset": "synthetic", "image_size": 32})
    again = project.mlflow_run("split", {"dataset": "synthetic", "image_size": 32})
    assert "(reused)" in again.stdout, "the same files and split reuse the finished split run"
    assert len(_split_runs("synthetic")) == 1
    project.medtune("split", "--dataset", "synthetic", "--image-size", "32", "--new-run")
    first, second = _split_runs("synthetic")
    client = MlflowClient()
    for run in (first, second):
        assert run.info.status == "FINISHED"
        assert run.data.tags["medtune.dataset"] == "synthetic"
        assert run.data.params["image_size"] == "32"
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"manifest.csv", "report.json", "class_counts.png", "samples.png"} <= names
        assert run.inputs.dataset_inputs, "the manifest must be logged as an MLflow dataset input"
    assert first.data.tags["medtune.cache_reused"] == "false"
    assert second.data.tags["medtune.cache_reused"] == "true"
    assert first.data.tags["medtune.manifest_hash"] == second.data.tags["medtune.manifest_hash"]
    manifest, report = _artifacts(first.info.run_id, tmp_path)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert set(manifest["label"]) == {"crescent", "disc", "ring", "speckled"}
    assert report["accounted"]["ok"] and report["accounted"]["files_seen"] == 160
    assert first.data.metrics["n_train"] + first.data.metrics["n_val"] + first.data.metrics["n_test"] == len(manifest)
    _no_run_left_running()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_split_real_brain_mri_sample_drops_duplicates(project, tmp_path, shared_data):
    src = shared_data("brain_mri") / "Training"
    data = tmp_path / "brain_sample"
    by_sha = defaultdict(list)
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir())[:400]:
            by_sha[(cls_dir.name, _sha(f))].append(f)
    dup_groups = [files for files in by_sha.values() if len(files) > 1][:4]
    assert dup_groups, "expected byte-identical files in the real brain_mri folder"
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        out = data / "Training" / cls_dir.name
        out.mkdir(parents=True)
        for f in sorted(cls_dir.iterdir())[:12]:
            shutil.copy(f, out / f.name)
    for files in dup_groups:  # the real duplicates, both copies
        for f in files:
            shutil.copy(f, data / "Training" / f.parent.name / f.name)
    # An official test folder holding one copy of a training image and a few unique ones.
    leaked = dup_groups[0][0]
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        out = data / "Testing" / cls_dir.name
        out.mkdir(parents=True)
        for f in sorted(cls_dir.iterdir())[-3:]:
            shutil.copy(f, out / f"Te-{f.name}")
    shutil.copy(leaked, data / "Testing" / leaked.parent.name / "Te-leaked.jpg")
    (data / "Training" / "glioma" / "._hidden.jpg").write_bytes(b"\x00junk")
    (data / "Training" / "glioma" / "broken.jpg").write_bytes(leaked.read_bytes()[:2000])

    project.mlflow_run("split", {"dataset": str(data), "image_size": 32})
    (run,) = _split_runs("brain_sample")
    manifest, report = _artifacts(run.info.run_id, tmp_path)
    splits_per_sha = manifest.groupby("sha256")["split"].nunique()
    assert (splits_per_sha == 1).all(), "a file content sits in two splits"
    assert manifest["sha256"].is_unique, "exact duplicates must be removed"
    assert report["test_dropped_duplicates_of_train"] >= 1
    assert any(Path(d["path"]).name == "Te-leaked.jpg" for d in report["test_dropped"])
    assert report["removed_duplicates"], "the real duplicate copies must be reported as removed"
    assert [s for s in report["skipped"] if s["path"].endswith("broken.jpg")], (
        "truncated JPEG must be skipped with a reason"
    )
    assert report["accounted"]["ok"]
    assert set(manifest.loc[manifest["source"] == "test", "split"]) == {"test"}
    assert not any(p.startswith("/") for p in manifest["path"]), "manifest paths are relative to the dataset folder"


def test_split_real_isic_sample_finds_label_conflicts(project, tmp_path, shared_data):
    src = shared_data("isic_skin") / "Train"
    owners = defaultdict(set)
    files = {}
    for cls_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir()):
            sha = _sha(f)
            owners[sha].add(cls_dir.name)
            files.setdefault(sha, []).append(f)
    conflicts = [sha for sha, classes in owners.items() if len(classes) > 1][:3]
    assert conflicts, "isic_skin is known to hold the same image under two classes"
    data = tmp_path / "isic_sample"
    involved = {f.parent.name for sha in conflicts for f in files[sha]}
    for cls in involved:
        out = data / cls
        out.mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[:10]:
            shutil.copy(f, out / f.name)
    for sha in conflicts:
        for f in files[sha]:
            shutil.copy(f, data / f.parent.name / f.name)
    project.mlflow_run("split", {"dataset": str(data), "image_size": 32})
    (run,) = _split_runs("isic_sample")
    manifest, report = _artifacts(run.info.run_id, tmp_path)
    conflicted_paths = {Path(c["path"]).name for c in report["label_conflicts"]}
    for sha in conflicts:
        assert {f.name for f in files[sha]} <= conflicted_paths
        assert sha not in set(manifest["sha256"]), "a label conflict must be left out of every split"
    assert run.data.metrics["n_label_conflicts"] >= 2 * len(conflicts)


def test_a_class_that_label_conflicts_empty_is_named_and_can_be_left_out(project, tmp_path, shared_data):
    """isic_skin's trap: 75 of 77 seborrheic keratosis images are also filed under another class."""
    src = shared_data("isic_skin") / "Train"
    data = tmp_path / "isic_trap"
    owners = defaultdict(set)
    for cls in ("melanoma", "nevus"):
        (data / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[:8]:
            shutil.copy(f, data / cls / f.name)
            owners[_sha(f)].add(cls)
    (data / "seborrheic keratosis").mkdir()
    for f in sorted((src / "melanoma").iterdir())[:4]:  # the same files under a second class
        shutil.copy(f, data / "seborrheic keratosis" / f.name)

    proc = project.medtune("split", "--dataset", str(data), "--image-size", "32", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("medtune: error:")]
    assert "'seborrheic keratosis' has 0 group(s)" in line and "exclude_classes='seborrheic keratosis'" in line

    project.mlflow_run("split", {"dataset": str(data), "image_size": 32, "exclude_classes": "seborrheic keratosis"})
    (run,) = _split_runs("isic_trap")
    manifest, report = _artifacts(run.info.run_id, tmp_path)
    assert set(manifest["label"]) == {"melanoma", "nevus"} and report["classes"] == ["melanoma", "nevus"]
    assert run.data.params["exclude_classes"] == "seborrheic keratosis"
    assert len(manifest) == 16  # no conflict left: the class that held the copies is out
    bad = project.medtune("split", "--dataset", str(data), "--exclude-classes", "keratosis", check=False)
    assert bad.returncode == 2 and "exclude_classes: 'keratosis' is no class of" in bad.stderr


def test_split_real_covid_sample_nested_images_and_masks(project, tmp_path, shared_data):
    src = shared_data("covid19_radiography")
    data = tmp_path / "covid_sample" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Normal"):
        (data / cls / "images").mkdir(parents=True)
        (data / cls / "masks").mkdir(parents=True)
        for f in sorted((src / cls).glob("*.png"))[:10]:
            shutil.copy(f, data / cls / "images" / f.name)
            shutil.copy(f, data / cls / "masks" / f.name)
    project.mlflow_run("split", {"dataset": str(data.parent), "image_size": 32})
    (run,) = _split_runs("covid_sample")
    manifest, report = _artifacts(run.info.run_id, tmp_path)
    assert set(manifest["label"]) == {"COVID", "Normal"}
    assert not any("/masks/" in p for p in manifest["path"])
    assert report["accounted"]["files_seen"] == 20


def test_split_unknown_dataset_is_one_line_error(project):
    proc = project.medtune("split", "--dataset", "no_such_dataset", check=False)
    assert proc.returncode == 2
    assert "no_such_dataset" in proc.stderr and "Traceback" not in proc.stderr
