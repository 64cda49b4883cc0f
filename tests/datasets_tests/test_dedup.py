"""Tests of exact and near-duplicate grouping."""

from __future__ import annotations

import hashlib
import io
import time

import imagehash
import numpy as np
import pytest
from PIL import Image

from medtune.datasets.dedup import find_duplicates, label_conflicts
from medtune.datasets.records import ImageRecord
from medtune.datasets.synthetic import generate_phantom
from medtune.errors import DataError
from tests.helpers import write_phantom


def find_groups(records, phash_distance=0):
    return find_duplicates(records, phash_distance).groups


def rec(path: str, sha: str, phash: str = "0000000000000000", label: str = "a", source: str = "train") -> ImageRecord:
    return ImageRecord(path=path, label=label, source=source, sha256=sha, phash=phash, width=8, height=8, mode="L")


def flip_bits(value: int, bits: int) -> str:
    return f"{value ^ ((1 << bits) - 1):016x}"


def test_exact_duplicates_grouped_by_sha256():
    records = [rec("a", "s1"), rec("b", "s2"), rec("c", "s1"), rec("d", "s3"), rec("e", "s2"), rec("f", "s1")]
    assert find_groups(records) == [[0, 2, 5], [1, 4]]


def test_distance_zero_ignores_equal_phash_with_different_bytes(tmp_path):
    paths = [write_phantom(tmp_path / "a.png", 1), write_phantom(tmp_path / "b.jpg", 1, fmt="JPEG", quality=85)]
    records = [rec(paths[0], "s1", "00000000000000ff"), rec(paths[1], "s2", "00000000000000ff")]
    assert find_groups(records, phash_distance=0) == []
    assert find_groups(records, phash_distance=1) == [[0, 1]]


def test_a_candidate_whose_file_is_unreadable_is_not_confirmed(tmp_path, caplog):
    records = [rec(write_phantom(tmp_path / "a.png", 1), "s1"), rec(str(tmp_path / "gone.png"), "s2")]
    found = find_duplicates(records, phash_distance=1)
    assert (found.groups, found.candidate_pairs, found.confirmed_pairs) == ([], 1, 0)
    assert "gone.png unreadable" in caplog.text


def test_near_duplicates_within_distance_are_grouped_transitively(tmp_path):
    base = 0x0123456789ABCDEF
    # a, b and c are one picture saved three ways; d is another picture
    same = [write_phantom(tmp_path / f"{k}.{fmt.lower()}", 3, fmt=fmt) for k, fmt in enumerate(("PNG", "JPEG", "BMP"))]
    records = [
        rec(same[0], "s1", f"{base:016x}"),
        rec(same[1], "s2", flip_bits(base, 3)),  # 3 bits from a
        rec(same[2], "s3", flip_bits(base, 6)),  # 3 bits from b, 6 from a
        rec(write_phantom(tmp_path / "d.png", 4), "s4", f"{base ^ 0xFFFF_FFFF_0000_0000:016x}"),  # 32 bits away
    ]
    assert find_groups(records, phash_distance=2) == []
    assert find_groups(records, phash_distance=3) == [[0, 1, 2]]
    assert find_groups(records, phash_distance=64) == [[0, 1, 2]]  # d is a candidate, but its pixels differ


def test_groups_span_official_train_and_test_folders():
    records = [rec("train/a", "s1"), rec("test/a", "s1", source="test"), rec("test/b", "s2", source="test")]
    assert find_groups(records) == [[0, 1]]


def test_reencoded_image_is_a_near_duplicate_with_imagehash_phash(tmp_path):
    image, _ = generate_phantom("ring", np.random.default_rng(7), 96)
    other, _ = generate_phantom("ring", np.random.default_rng(8), 96)
    records = []
    encodings = [(image, "PNG", {}), (image, "JPEG", {"quality": 90}), (other, "PNG", {})]
    for k, (array, fmt, kwargs) in enumerate(encodings):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=fmt, **kwargs)
        data = buf.getvalue()
        path = tmp_path / f"img{k}.{fmt.lower()}"
        path.write_bytes(data)
        phash = str(imagehash.phash(Image.open(io.BytesIO(data))))
        records.append(rec(str(path), hashlib.sha256(data).hexdigest(), phash))
    distance = bin(int(records[0].phash, 16) ^ int(records[1].phash, 16)).count("1")
    assert distance <= 6
    assert find_groups(records, phash_distance=0) == []
    assert find_groups(records, phash_distance=6) == [[0, 1]]


def test_label_conflicts_are_groups_with_several_labels():
    records = [
        rec("a", "s1", label="x"),
        rec("b", "s1", label="y"),
        rec("c", "s2", label="x"),
        rec("d", "s2", label="x"),
    ]
    groups = find_groups(records)
    assert groups == [[0, 1], [2, 3]]
    assert label_conflicts(records, groups) == [[0, 1]]


def test_bad_phash_and_distance_are_data_errors():
    with pytest.raises(DataError, match="phash_distance"):
        find_groups([rec("a", "s1")], phash_distance=-1)
    with pytest.raises(DataError, match="phash_distance"):
        find_groups([rec("a", "s1")], phash_distance=65)
    with pytest.raises(DataError, match="bad.png"):
        find_groups([rec("a", "s1"), rec("bad.png", "s2", "xyz")], phash_distance=4)


def test_many_records_are_grouped_quickly(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, size=7000, dtype=np.int64)
    records = [rec(f"{i}", f"s{i}", f"{int(v):016x}") for i, v in enumerate(values)]
    records[10] = rec(write_phantom(tmp_path / "10.png", 10), "s10", records[10].phash)
    records.append(rec(write_phantom(tmp_path / "copy.jpg", 10, fmt="JPEG"), "s-copy", flip_bits(int(values[10]), 2)))
    start = time.perf_counter()
    groups = find_groups(records, phash_distance=4)
    elapsed = time.perf_counter() - start
    assert [10, 7000] in groups
    assert elapsed < 5.0  # about 0.3 s on one core
