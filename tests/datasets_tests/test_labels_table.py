"""Labels from a table: read and checked in one line per fault, then scanned like class folders."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from medtune.datasets.labels_table import find_table, read_table
from medtune.datasets.layout import table_layout
from medtune.datasets.patients import PatientKeys
from medtune.datasets.scan import scan_dataset
from medtune.errors import DataError

KEYS = PatientKeys(b"k" * 32)


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (12, 10), value).save(buf, format="PNG")
    return buf.getvalue()


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _table(root: Path, text: str, name: str = "labels.csv") -> Path:
    return _put(root / name, text.encode())


def test_rows_give_absolute_paths_labels_keyed_patients_and_splits(tmp_path):
    _table(tmp_path, "path,label,patient,split\nimg/a.png,cat,MRN-0042,train\nimg/b.png,dog, ,TEST\n")
    table = read_table("labels.csv", tmp_path, KEYS)
    a, b = table.rows
    assert (a.path, a.label, a.split, a.line) == (str(tmp_path / "img" / "a.png"), "cat", "train", 2)
    assert a.patient == KEYS.key("MRN-0042") and "0042" not in a.patient and len(a.patient) == 16
    assert (b.patient, b.split) == ("", "test"), "an empty patient is none; the split is case-insensitive"
    assert table.classes == ["cat", "dog"]


def test_a_relative_table_is_looked_up_in_the_dataset_folder_then_the_working_directory(tmp_path, monkeypatch):
    data, here = tmp_path / "data", tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    _table(here, "path,label\n")
    assert find_table("labels.csv", data) == Path.cwd() / "labels.csv"
    _table(data, "path,label\n")
    assert find_table("labels.csv", data) == data / "labels.csv"
    with pytest.raises(DataError, match=r"^labels=nope.csv: no such file \(looked in .*data and .*here\)$"):
        find_table("nope.csv", data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.png,cat\n", r"labels\.csv: no 'path' column \(columns: file, label;"),
        ("path,diagnosis\na.png,cat\n", r"labels\.csv: no 'label' column"),
        ("path,label\na.png,cat\nb.png,cat\n", r"labels\.csv: the label column holds one class \('cat'\)"),
        ("path,label\n../outside.png,cat\nb.png,dog\n", r"labels\.csv line 2: \.\./outside\.png is outside"),
        ("path,label\na.png,cat\n/etc/passwd,dog\n", r"labels\.csv line 3: /etc/passwd is outside"),
        ("path,label,split\na.png,cat,holdout\n", r"line 2: split 'holdout' is none of train, val, test"),
        ("path,label\na.png,cat\nb.png,\n", r"labels\.csv line 3: empty label"),
        ("path,label\na.png,cat\n./a.png,dog\n", r"line 3: \./a\.png is listed twice \(also line 2\)"),
    ],
)
def test_a_bad_table_is_one_line_naming_the_file_and_line(tmp_path, text, message):
    _table(tmp_path, text)
    with pytest.raises(DataError, match=message) as caught:
        read_table("labels.csv", tmp_path, KEYS)
    assert "\n" not in str(caught.value) and str(tmp_path / "labels.csv") in str(caught.value)


def test_a_patient_value_never_appears_in_an_error(tmp_path):
    _table(tmp_path, "path,label,patient,split\na.png,cat,Doe^Jane,nope\n")
    with pytest.raises(DataError) as caught:
        read_table("labels.csv", tmp_path, KEYS)
    assert "Doe" not in str(caught.value)


def test_scan_labels_rows_skips_missing_and_broken_files_and_ignores_unlisted_ones(tmp_path):
    root = tmp_path / "ds"
    for i in range(3):
        _put(root / "scans" / f"c{i}.png", _png(10 + i))
        _put(root / "scans" / f"d{i}.png", _png(100 + i))
    _put(root / "scans" / "broken.png", _png(5)[:20])
    _put(root / "scans" / "extra.png", _png(200))  # no row
    _put(root / ".hidden" / "h.png", _png(201))  # has a row, but the walk passes over the folder
    rows = [f"scans/c{i}.png,cat,P{i % 2}," for i in range(3)] + [f"scans/d{i}.png,dog,P9,test" for i in range(3)]
    rows += ["scans/gone.png,cat,,", "scans/broken.png,dog,,", ".hidden/h.png,dog,,"]
    _table(root, "path,label,patient,split\n" + "\n".join(rows) + "\n")

    result, _ = scan_dataset(table_layout(root, "labels.csv", KEYS), keys=KEYS)

    assert result.classes == ["cat", "dog"]
    by_name = {Path(r.path).name: r for r in result.records}
    assert sorted(by_name) == ["c0.png", "c1.png", "c2.png", "d0.png", "d1.png", "d2.png"]
    assert by_name["c0.png"].label == "cat" and by_name["c0.png"].patient == KEYS.key("P0")
    assert by_name["c1.png"].patient == KEYS.key("P1") and by_name["c1.png"].source == "train"
    assert {by_name[f"d{i}.png"].source for i in range(3)} == {"test"} and result.has_official_test
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert reasons["gone.png"] == "missing file (labels.csv line 8)"
    assert reasons["h.png"].startswith("hidden") and reasons["h.png"].endswith("(labels.csv line 10)")
    assert "broken.png" in reasons
    assert result.ignored["unlisted"] == 1
    assert {Path(s.path).name: s.reason for s in result.ignored_files}["extra.png"] == "no row in the labels table"


def test_exclude_classes_leaves_a_class_out_of_the_table(tmp_path):
    _table(tmp_path, "path,label\na.png,cat\nb.png,dog\nc.png,fox\n")
    layout = table_layout(tmp_path, "labels.csv", KEYS).without(["fox"])
    assert layout.classes == ["cat", "dog"] and [Path(r.path).name for r in layout.table.rows] == ["a.png", "b.png"]
