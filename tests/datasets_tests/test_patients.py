"""Patients in the split: keyed under a salt, never in two splits, counted and flagged in the report."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from medtune.datasets.patients import MAX_PATIENT_SHARE, PatientKeys, dataset_keys, dicom_patient, join_groups
from medtune.datasets.records import ImageRecord, ScanResult
from medtune.datasets.splitting import make_split
from medtune.errors import DataError
from tests.dicom_files import PATIENT, dicom_bytes, grey_phantom


def rec(path, label, patient="", split="", source=None, sha=None) -> ImageRecord:
    return ImageRecord(
        path=path,
        label=label,
        source=source or ("test" if split == "test" else "train"),
        sha256=sha or hashlib.sha256(path.encode()).hexdigest(),
        phash=hashlib.sha256(("phash" + path).encode()).hexdigest()[:16],
        width=8,
        height=8,
        mode="L",
        patient=patient,
        split=split,
    )


def scan_of(records) -> ScanResult:
    return ScanResult(
        root="/d",
        classes=sorted({r.label for r in records}),
        records=list(records),
        has_official_test=any(r.source == "test" for r in records),
    )


def patients_dataset(per_patient: int = 3, n_patients: int = 12) -> list[ImageRecord]:
    """Two classes, each patient's images of one class, ``per_patient`` images each."""
    return [
        rec(f"/d/{label}/p{p:02d}_{i}.png", label, patient=f"{label}{p:02d}")
        for label in ("a", "b")
        for p in range(n_patients)
        for i in range(per_patient)
    ]


def test_keys_are_stable_per_salt_and_unlinkable_across_salts(tmp_path):
    salt_file = tmp_path / "index" / "ds.salt"
    keys = dataset_keys(salt_file)
    assert dataset_keys(salt_file) == keys, "the same dataset keys its patients the same way on every run"
    assert stat.S_IMODE(os.stat(salt_file).st_mode) == 0o600
    assert keys.key("MRN-0042") == keys.key(" MRN-0042 ") != dataset_keys(tmp_path / "other.salt").key("MRN-0042")
    plain = hashlib.sha256(b"MRN-0042").hexdigest()
    assert keys.key("MRN-0042") not in plain, "a keyed hash, not a plain one anyone can recompute"
    assert keys.key("") == keys.key(None) == ""


def test_dicom_patient_id_is_read_and_keyed_with_or_without_a_preamble():
    keys = PatientKeys(b"s" * 32)
    for preamble in (True, False):
        assert dicom_patient(dicom_bytes(grey_phantom(0), preamble=preamble), keys) == keys.key(PATIENT["PatientID"])
    assert dicom_patient(b"\x89PNG\r\n\x1a\n" + bytes(300), keys) == ""


def test_join_groups_merges_groups_that_share_a_record():
    assert join_groups(7, [[0, 3]], [[3, 5], [1, 2]]) == [[0, 3, 5], [1, 2]]
    assert join_groups(3, [], []) == []


def test_no_patient_straddles_two_splits_and_the_report_counts_patients():
    result = make_split(scan_of(patients_dataset()), val_fraction=0.2, test_fraction=0.2, seed=1)
    m = result.manifest
    assert (m.groupby("patient")["split"].nunique() == 1).all()
    assert set(m["split"]) == {"train", "val", "test"}
    patients = result.report["patients"]
    assert patients["counts"] == {s: m.loc[m["split"] == s, "patient"].nunique() for s in ("train", "val", "test")}
    assert sum(patients["counts"].values()) == patients["total"] == 24 and patients["straddling"] == 0
    assert patients["dominant"] == [] and patients["images_without_patient"] == 0


def test_without_patients_the_split_is_what_it_was():
    records = [rec(f"/d/{label}/{i:02d}.png", label) for label in ("a", "b") for i in range(20)]
    keyed = [rec(r.path, r.label, patient=f"p{i}") for i, r in enumerate(records)]  # one image each
    plain = make_split(scan_of(records), seed=4).manifest
    one_each = make_split(scan_of(keyed), seed=4).manifest
    assert plain["split"].tolist() == one_each["split"].tolist()
    assert plain["patient"].eq("").all()


def test_a_patient_holding_much_of_a_class_is_flagged():
    records = patients_dataset(per_patient=1)
    records += [rec(f"/d/b/big_{i}.png", "b", patient="big") for i in range(8)]  # 8 of 20 b images
    report = make_split(scan_of(records), seed=0).report
    (flag,) = report["patients"]["dominant"]
    assert (flag["label"], flag["images"], flag["share"]) == ("b", 8, 0.4) and flag["share"] > MAX_PATIENT_SHARE
    assert any("one patient" in n and "'b'" in n and "40%" in n for n in report["notes"])


def test_an_official_test_image_of_a_training_patient_is_dropped_as_a_leak():
    records = patients_dataset(per_patient=2)
    records += [
        rec(f"/d/test/{label}{p}.png", label, patient=f"t{label}{p}", split="test") for label in "ab" for p in range(3)
    ]
    records.append(rec("/d/test/a_leak.png", "a", patient="a03", split="test"))
    result = make_split(scan_of(records), seed=2)
    (leak,) = result.report["test_dropped"]
    assert leak["path"] == "/d/test/a_leak.png" and leak["kind"] == "patient"
    assert leak["duplicate_of"].startswith("/d/a/p03_")
    assert result.report["test_source"] == "official" and result.report["accounted"]["ok"]
    assert set(result.manifest.loc[result.manifest["source"] == "test", "split"]) == {"test"}


def test_given_val_and_test_rows_are_respected_and_train_rows_never_go_to_test():
    records = []
    for label in "ab":
        records += [rec(f"/d/{label}/tr{i}.png", label, split="train") for i in range(10)]
        records += [rec(f"/d/{label}/va{i}.png", label, split="val") for i in range(2)]
        records += [rec(f"/d/{label}/free{i}.png", label) for i in range(6)]
    m = make_split(scan_of(records), seed=0).manifest.set_index("path")
    for label in "ab":
        assert (m.loc[[f"/d/{label}/va{i}.png" for i in range(2)], "split"] == "val").all()
        assert (m.loc[[f"/d/{label}/tr{i}.png" for i in range(10)], "split"] == "train").all()
        free = m.loc[[f"/d/{label}/free{i}.png" for i in range(6)], "split"]
        assert "test" in set(free) and "val" not in set(free), "test is carved from free rows, val is given"


def test_train_rows_give_validation_images_when_no_row_says_val():
    records = [rec(f"/d/{label}/tr{i}.png", label, split="train") for label in "ab" for i in range(10)]
    records += [rec(f"/d/{label}/te{i}.png", label, split="test") for label in "ab" for i in range(3)]
    result = make_split(scan_of(records), val_fraction=0.2, seed=0)
    m = result.manifest
    assert set(m.loc[m["path"].str.contains("/tr"), "split"]) == {"train", "val"}
    assert set(m.loc[m["path"].str.contains("/te"), "split"]) == {"test"}
    assert result.report["val_source"] == "carved"


def test_only_train_rows_leave_nothing_for_test_and_say_so():
    records = [rec(f"/d/{label}/tr{i}.png", label, split="train") for label in "ab" for i in range(10)]
    with pytest.raises(DataError, match=r"class 'a': no image left for test .*split=test"):
        make_split(scan_of(records), seed=0)


def test_a_class_whose_images_all_ride_with_other_patients_still_lands_in_every_split():
    """Each patient has one image of each class: every unit is labelled by its first image (class a),
    class b has no unit of its own and goes where its patients go."""
    records = [rec(f"/d/p{p:02d}/{label}.png", label, patient=f"p{p:02d}") for p in range(12) for label in "ab"]
    result = make_split(scan_of(records), seed=5)
    m = result.manifest
    assert (m.groupby("patient")["split"].nunique() == 1).all()
    assert result.report["counts"]["test"]["b"] == result.report["counts"]["test"]["a"] >= 1
    assert {s: c["b"] for s, c in result.report["counts"].items()} == {
        s: c["a"] for s, c in result.report["counts"].items()
    }


def test_scan_keys_dicom_patients_and_its_index_forgets_them_under_another_salt(tmp_path):
    from medtune.datasets.layout import detect_layout
    from medtune.datasets.scan import scan_dataset

    for label, index in (("a", 0), ("b", 1)):
        (tmp_path / "ds" / label).mkdir(parents=True)
        (tmp_path / "ds" / label / "x.dcm").write_bytes(dicom_bytes(grey_phantom(index)))
    layout, index_path = detect_layout(tmp_path / "ds"), tmp_path / "index.json"
    first, second = PatientKeys(b"1" * 32), PatientKeys(b"2" * 32)
    scan, _ = scan_dataset(layout, index_path=index_path, keys=first)
    assert {r.patient for r in scan.records} == {first.key(PATIENT["PatientID"])}
    assert PATIENT["PatientID"].encode() not in index_path.read_bytes()
    again, _ = scan_dataset(layout, index_path=index_path, keys=second)
    assert {r.patient for r in again.records} == {second.key(PATIENT["PatientID"])}
    unkeyed, _ = scan_dataset(layout)
    assert {r.patient for r in unkeyed.records} == {""}, "without keys no PatientID is read"
