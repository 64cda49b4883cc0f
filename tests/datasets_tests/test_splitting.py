"""Tests of leak-free, stratified, group-aware splitting."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pandas as pd
import pytest

from medtune.datasets.records import ImageRecord, ScanResult, SkippedFile
from medtune.datasets.splitting import MANIFEST_COLUMNS, make_split
from medtune.errors import DataError
from tests.helpers import write_phantom


def _phash(key: str) -> str:
    # Random-looking 64-bit values: unrelated images are ~32 bits apart.
    return hashlib.sha256(("phash" + key).encode()).hexdigest()[:16]


def rec(path, label, source="train", sha=None, phash=None) -> ImageRecord:
    return ImageRecord(
        path=path,
        label=label,
        source=source,
        sha256=sha or hashlib.sha256(path.encode()).hexdigest(),
        phash=phash or _phash(path),
        width=8,
        height=8,
        mode="L",
    )


def near(phash: str, bits: int = 1) -> str:
    return f"{int(phash, 16) ^ ((1 << bits) - 1):016x}"


def scan_of(records, official=False, skipped=(), ignored=None) -> ScanResult:
    classes = sorted({r.label for r in records})
    return ScanResult(
        root="/data",
        classes=classes,
        records=list(records),
        skipped=list(skipped),
        ignored=dict(ignored or {}),
        has_official_test=official,
    )


def carved_dataset(root) -> tuple[list[ImageRecord], dict[str, int]]:
    """Three classes of 40/60/100 images with near-duplicate groups of 2 and 3.

    The groups' files are written under ``root`` (the near pairs are confirmed on pixels); the
    other paths are never read.
    """
    records = []
    for c, (label, n) in enumerate((("glioma", 40), ("meningioma", 60), ("no tumor", 100))):
        originals = [rec(f"{root}/train/{label}/{i:03d}.jpg", label) for i in range(n)]
        records += originals
        # near-duplicate groups: re-encodings of the first three images (1 and 2 bits away)
        for g, size in enumerate((2, 3, 2)):
            anchor = rec(write_phantom(originals[g].path, 10 * c + g), label)
            for k in range(size - 1):
                path = write_phantom(f"{root}/train/{label}/near_{g}_{k}.jpg", 10 * c + g, fmt="JPEG", quality=85 - k)
                records.append(rec(path, label, phash=near(anchor.phash, k + 1)))
    return records, {"glioma": 44, "meningioma": 64, "no tumor": 104}


def test_manifest_columns_order_and_json_report(tmp_path):
    records, _ = carved_dataset(tmp_path)
    result = make_split(scan_of(records), phash_distance=2)
    m = result.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    pd.testing.assert_frame_equal(m, m.sort_values(["split", "label", "path"]).reset_index(drop=True))
    json.dumps(result.report)
    assert result.report["classes"] == ["glioma", "meningioma", "no tumor"]
    assert set(m["split"]) == {"train", "val", "test"}


def test_same_seed_and_shuffled_input_give_identical_manifest(tmp_path):
    records, _ = carved_dataset(tmp_path)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    a = make_split(scan_of(records), seed=3, phash_distance=2)
    b = make_split(scan_of(shuffled), seed=3, phash_distance=2)
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert a.report == b.report
    c = make_split(scan_of(records), seed=4, phash_distance=2)
    val_a = set(a.manifest.loc[a.manifest["split"] == "val", "path"])
    val_c = set(c.manifest.loc[c.manifest["split"] == "val", "path"])
    assert val_a != val_c


def test_stratified_within_one_group_of_target(tmp_path):
    records, sizes = carved_dataset(tmp_path)
    m = make_split(scan_of(records), val_fraction=0.2, test_fraction=0.1, phash_distance=2).manifest
    largest_group = 3
    for label, n in sizes.items():
        counts = m[m["label"] == label]["split"].value_counts()
        assert abs(counts["val"] - round(0.2 * n)) <= largest_group
        assert abs(counts["test"] - round(0.1 * n)) <= largest_group
        assert counts.sum() == n


def test_a_group_never_straddles_two_splits(tmp_path):
    records, _ = carved_dataset(tmp_path)
    for seed in range(5):
        m = make_split(scan_of(records), seed=seed, phash_distance=2).manifest
        grouped = m[m["group"] != ""]
        assert len(grouped) == 3 * (2 + 3 + 2)  # 3 classes x groups of 2, 3, 2
        assert (grouped.groupby("group")["split"].nunique() == 1).all()


def test_exact_duplicates_keep_one_representative_preferring_train():
    records = [rec(f"/d/train/{c}/{i}.png", c) for c in ("a", "b") for i in range(10)]
    records += [
        rec("/d/train/a/0_copy.png", "a", sha=records[0].sha256),
        rec("/d/train/a/00.png", "a", sha=records[1].sha256),  # sorts before "1.png": becomes the representative
    ]
    result = make_split(scan_of(records))
    removed = {d["path"]: d["duplicate_of"] for d in result.report["removed_duplicates"]}
    assert removed == {"/d/train/a/0_copy.png": "/d/train/a/0.png", "/d/train/a/1.png": "/d/train/a/00.png"}
    assert not set(removed) & set(result.manifest["path"])
    assert result.report["duplicate_groups"]["count"] == 2


def test_official_test_drops_duplicates_of_train_and_ignores_test_fraction(tmp_path):
    records = [rec(f"/d/Training/{c}/{i}.jpg", c) for c in ("a", "b") for i in range(20)]
    records[25] = rec(write_phantom(tmp_path / "Training/b/5.png", 25), "b")
    tests = [rec(f"/d/Testing/{c}/{i}.jpg", c, source="test") for c in ("a", "b") for i in range(6)]
    tests.append(rec("/d/Testing/a/copy.jpg", "a", source="test", sha=records[3].sha256))  # exact copy of train
    reenc = write_phantom(tmp_path / "Testing/b/reenc.jpg", 25, fmt="JPEG")  # near copy
    tests.append(rec(reenc, "b", source="test", phash=near(records[25].phash, 2)))
    result = make_split(scan_of(records + tests, official=True), test_fraction=0.5, phash_distance=3)
    m, report = result.manifest, result.report
    assert report["test_dropped_duplicates_of_train"] == 2
    assert {d["path"]: d["kind"] for d in report["test_dropped"]} == {
        "/d/Testing/a/copy.jpg": "exact",
        reenc: "near",
    }
    assert sorted(m[m["split"] == "test"]["path"]) == sorted(t.path for t in tests[:12])
    assert set(m[m["split"] == "val"]["source"]) == {"train"}
    assert report["test_fraction_ignored"] is True and report["notes"]
    assert report["accounted"]["ok"] and report["accounted"]["kept"] == 40 + 12


def test_label_conflicts_are_left_out_and_reported():
    records = [rec(f"/d/{c}/{i}.png", c) for c in ("a", "b") for i in range(10)]
    records.append(rec("/d/b/same_as_a0.png", "b", sha=records[0].sha256))
    result = make_split(scan_of(records))
    conflicts = {(d["path"], d["label"]) for d in result.report["label_conflicts"]}
    assert conflicts == {("/d/a/0.png", "a"), ("/d/b/same_as_a0.png", "b")}
    assert not {p for p, _ in conflicts} & set(result.manifest["path"])


def test_near_duplicates_with_different_labels_are_kept_together_not_conflicts(tmp_path):
    records = [rec(f"/d/{c}/{i}.png", c) for c in ("a", "b") for i in range(10)]
    records[0] = rec(write_phantom(tmp_path / "a/0.png", 0), "a")
    lookalike = rec(
        write_phantom(tmp_path / "b/looks_like_a0.jpg", 0, fmt="JPEG"), "b", phash=near(records[0].phash, 2)
    )
    records.append(lookalike)
    result = make_split(scan_of(records), phash_distance=4)
    assert result.report["label_conflicts"] == []
    (mismatch,) = result.report["near_duplicate_label_mismatch"]
    assert mismatch["labels"] == ["a", "b"]
    m = result.manifest.set_index("path")
    assert m.loc[lookalike.path, "split"] == m.loc[records[0].path, "split"]


def test_every_file_is_accounted_for(tmp_path):
    records, _ = carved_dataset(tmp_path)
    records.append(rec("/data/train/glioma/dup.jpg", "glioma", sha=records[0].sha256))
    records.append(rec("/data/train/meningioma/conflict.jpg", "meningioma", sha=records[5].sha256))
    skipped = [SkippedFile("/data/train/glioma/broken.jpg", "truncated")]
    result = make_split(scan_of(records, skipped=skipped, ignored={"hidden": 2}), phash_distance=2)
    report = result.report
    acc = report["accounted"]
    assert acc["ok"] and acc["files_seen"] == len(records) + 1
    assert acc == {
        "files_seen": len(records) + 1,
        "kept": len(result.manifest),
        "skipped": 1,
        "removed_duplicates": 1,
        "conflicted": 2,
        "test_dropped_duplicates_of_train": 0,
        "ok": True,
    }
    everything = set(result.manifest["path"]) | {d["path"] for d in report["label_conflicts"]}
    everything |= {d["path"] for d in report["removed_duplicates"]} | {d["path"] for d in report["skipped"]}
    assert everything == {r.path for r in records} | {"/data/train/glioma/broken.jpg"}
    assert report["ignored"] == {"hidden": 2}
    assert report["skipped"] == [{"path": "/data/train/glioma/broken.jpg", "reason": "truncated"}]
    assert sum(report["totals"].values()) == len(result.manifest)


def test_class_with_too_few_groups_is_a_data_error(tmp_path):
    records = [rec(f"/d/a/{i}.png", "a") for i in range(10)] + [rec(f"/d/rare/{i}.png", "rare") for i in range(2)]
    with pytest.raises(DataError, match=r"'rare' has 2"):
        make_split(scan_of(records))
    # three images, but two are one group: still too few groups
    rare = [write_phantom(tmp_path / f"rare/{i}.png", 7, fmt=("PNG", "BMP")[i]) for i in range(2)]  # one picture
    records = records[:10] + [rec(rare[i], "rare", phash=near(_phash("x"), i)) for i in range(2)]
    records.append(rec("/d/rare/other.png", "rare"))
    with pytest.raises(DataError, match=r"'rare' has 2"):
        make_split(scan_of(records), phash_distance=1)


def test_smallest_possible_class_gets_one_group_per_split():
    records = [rec(f"/d/a/{i}.png", "a") for i in range(3)]
    m = make_split(scan_of(records)).manifest
    assert sorted(m["split"]) == ["test", "train", "val"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.2}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"phash_distance": 70}, "phash_distance"),
    ],
)
def test_bad_parameters_are_data_errors_naming_the_parameter(kwargs, name):
    records = [rec(f"/d/a/{i}.png", "a") for i in range(10)]
    with pytest.raises(DataError, match=name):
        make_split(scan_of(records), **kwargs)


def test_split_fractions_are_close_on_a_larger_dataset():
    rng = np.random.default_rng(0)
    records = [rec(f"/d/{c}/{i:04d}.png", c) for c in ("a", "b") for i in range(int(rng.integers(300, 500)))]
    m = make_split(scan_of(records), val_fraction=0.15, test_fraction=0.15).manifest
    for label, part in m.groupby("label"):
        n = len(part)
        assert (part["split"] == "val").sum() == round(0.15 * n)
        assert (part["split"] == "test").sum() == round(0.15 * n)
