"""Scanning dataset folders: what is kept, skipped, ignored, and what the index saves."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from medtune.datasets import images
from medtune.datasets.layout import detect_layout
from medtune.datasets.scan import scan_dataset
from medtune.errors import DataError


def _png(value: int, size=(16, 12), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_noise(seed: int, size=(128, 128)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def messy(tmp_path) -> Path:
    """A train/test dataset holding every kind of file a scan must handle."""
    root = tmp_path / "ds"
    tr, te = root / "train", root / "test"
    _put(tr / "cat" / "a.png", _png(10))
    _put(tr / "cat" / "B.PNG", _png(20, mode="RGB"))
    _put(tr / "cat" / "png_named.jpg", _png(30))
    _put(tr / "cat" / "sub" / "deep.JPG", _jpeg_noise(1))
    _put(tr / "cat" / "zero.jpg", b"")
    cut = _jpeg_noise(2)
    _put(tr / "cat" / "cut.jpg", cut[: len(cut) // 2])
    _put(tr / "cat" / "text.jpg", b"hello")
    _put(tr / "cat" / "._a.jpg", b"\x00\x05\x16\x07 apple double")
    _put(tr / "cat" / ".ipynb_checkpoints" / "a-checkpoint.png", _png(10))
    _put(tr / "cat" / "masks" / "a.png", _png(255))
    _put(tr / "cat" / "labels.csv", b"a,b\n")
    _put(tr / "cat" / "notes.txt", b"x")
    _put(tr / "dog" / "images" / "d1.png", _png(40, mode="RGBA"))
    _put(tr / "dog" / "images" / "d2.bmp", _png(50))  # a PNG named .bmp: read by content
    _put(tr / "dog" / "masks" / "d1.png", _png(255))
    _put(te / "cat" / "t1.png", _png(60))
    _put(te / "dog" / "t2.png", _png(70))
    outside = _put(tmp_path / "elsewhere" / "out.png", _png(80))
    os.symlink(outside, tr / "dog" / "images" / "link_out.png")
    os.symlink(tr / "cat" / "a.png", tr / "dog" / "images" / "link_in.png")
    os.symlink(tr / "cat" / "gone.png", tr / "dog" / "images" / "broken.png")
    return root


def test_scan_keeps_valid_skips_bad_and_counts_ignored(messy):
    result, arrays = scan_dataset(detect_layout(messy))
    names = {(r.source, r.label, Path(r.path).name) for r in result.records}
    assert names == {
        ("train", "cat", "a.png"), ("train", "cat", "B.PNG"), ("train", "cat", "png_named.jpg"),
        ("train", "cat", "deep.JPG"), ("train", "dog", "d1.png"), ("train", "dog", "d2.bmp"),
        ("train", "dog", "link_in.png"), ("test", "cat", "t1.png"), ("test", "dog", "t2.png"),
    }  # fmt: skip
    skipped = {Path(s.path).name: s.reason for s in result.skipped}
    assert skipped == {
        "zero.jpg": "zero-byte file",
        "cut.jpg": "truncated image",
        "text.jpg": "not an image",
        "broken.png": "broken symlink",
    }
    assert result.ignored == {
        "hidden": 1, "checkpoint": 1, "mask": 1, "non_image_extension": 2, "symlink_outside": 1,
    }  # fmt: skip
    assert result.classes == ["cat", "dog"] and result.has_official_test
    assert result.root == str(messy) and arrays == {}
    keys = [(r.source, r.label, r.path) for r in result.records]
    assert keys == sorted(keys)


def test_record_fields(messy):
    result, _ = scan_dataset(detect_layout(messy))
    by_name = {Path(r.path).name: r for r in result.records}
    a = by_name["a.png"]
    assert Path(a.path).is_absolute()
    assert (a.width, a.height, a.mode) == (16, 12, "L")
    assert a.sha256 == hashlib.sha256((messy / "train/cat/a.png").read_bytes()).hexdigest()
    assert a.phash == str(imagehash.phash(Image.new("L", (16, 12), 10))) and len(a.phash) == 16
    assert by_name["link_in.png"].sha256 == a.sha256  # a link inside the root is followed
    assert by_name["d1.png"].mode == "RGBA" and by_name["B.PNG"].mode == "RGB"


def test_exif_rotated_size_is_recorded(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20)).save(buf, format="JPEG", exif=exif.tobytes())
    _put(tmp_path / "a" / "r.jpg", buf.getvalue())
    _put(tmp_path / "b" / "p.png", _png(1))
    result, _ = scan_dataset(detect_layout(tmp_path))
    rec = next(r for r in result.records if r.label == "a")
    assert (rec.width, rec.height) == (20, 40)


def test_keep_size_returns_arrays_by_record_path(messy):
    result, arrays = scan_dataset(detect_layout(messy), keep_size=8, channels=1)
    assert set(arrays) == {r.path for r in result.records}
    a = next(r for r in result.records if r.path.endswith("a.png"))
    assert arrays[a.path].shape == (8, 8, 1) and arrays[a.path].dtype == np.uint8
    assert (arrays[a.path] == 10).all()


def test_rescan_with_index_decodes_nothing(messy, tmp_path, monkeypatch):
    index = tmp_path / "index" / "scan.json"
    first, arrays = scan_dataset(detect_layout(messy), index_path=index, keep_size=8)
    assert index.is_file() and len(arrays) == len(first.records)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file the index knows")

    monkeypatch.setattr(images, "open_bytes", no_decoding)
    monkeypatch.setattr(images, "open_image", no_decoding)
    ticks = []
    second, arrays = scan_dataset(
        detect_layout(messy), index_path=index, keep_size=8, progress=lambda d, t: ticks.append((d, t))
    )
    assert second.records == first.records
    assert second.skipped == first.skipped
    assert arrays == {}  # index hits carry no array: callers decode them
    assert ticks[-1][0] == ticks[-1][1] == len(first.records) + 3  # broken link is no candidate


def test_index_misses_changed_files(messy, tmp_path):
    index = tmp_path / "scan.json"
    scan_dataset(detect_layout(messy), index_path=index)
    changed = messy / "train" / "cat" / "a.png"
    changed.write_bytes(_png(99, size=(20, 20)))
    os.utime(changed, ns=(1, 1))
    result, arrays = scan_dataset(detect_layout(messy), index_path=index, keep_size=4)
    link = messy / "train" / "dog" / "images" / "link_in.png"  # stat follows the link: changed too
    assert sorted(arrays) == sorted([str(changed), str(link)])
    rec = next(r for r in result.records if r.path == str(changed))
    assert (rec.width, rec.height) == (20, 20)


def test_corrupt_index_is_rebuilt(messy, tmp_path):
    index = _put(tmp_path / "scan.json", b"{not json")
    result, _ = scan_dataset(detect_layout(messy), index_path=index)
    assert len(result.records) == 9 and index.read_text().startswith("{")


def test_process_pool_gives_same_result(messy, monkeypatch):
    serial, serial_arrays = scan_dataset(detect_layout(messy), workers=1, keep_size=6)
    monkeypatch.setattr(images, "MIN_FILES_FOR_POOL", 0)
    pooled, pooled_arrays = scan_dataset(detect_layout(messy), workers=2, keep_size=6)
    assert pooled.records == serial.records and pooled.skipped == serial.skipped
    assert all(np.array_equal(pooled_arrays[k], v) for k, v in serial_arrays.items())


def test_no_valid_images_is_an_error(tmp_path):
    _put(tmp_path / "a" / "x.jpg", b"")
    _put(tmp_path / "b" / "y.jpg", b"text")
    with pytest.raises(DataError, match="no valid images"):
        scan_dataset(detect_layout(tmp_path))


def test_one_class_with_images_is_an_error(tmp_path):
    _put(tmp_path / "a" / "x.png", _png(1))
    _put(tmp_path / "b" / "y.jpg", b"")
    with pytest.raises(DataError, match="only one class with valid images \\('a'\\)"):
        scan_dataset(detect_layout(tmp_path))


def _shared_data() -> Path:
    env = os.environ.get("MEDTUNE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.mark.realdata
def test_scan_real_brain_mri_sample(tmp_path):
    source = _shared_data() / "brain_mri" / "Training"
    if not source.is_dir():
        pytest.skip(f"real data absent: {source} (set MEDTUNE_SHARED_DATA to the shared data folder)")
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        for f in sorted(class_dir.glob("*.jpg"))[:10]:  # copies: links out of the root are ignored
            _put(tmp_path / "Training" / class_dir.name / f.name, f.read_bytes())
    layout = detect_layout(tmp_path, ["glioma", "meningioma", "notumor", "pituitary"])
    result, arrays = scan_dataset(layout, keep_size=32)
    assert result.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert len(result.records) == 40 and not result.skipped and not result.has_official_test
    assert all(len(r.phash) == 16 and r.mode in ("L", "RGB") for r in result.records)
    assert len(arrays) == 40 and all(a.shape == (32, 32, 3) for a in arrays.values())
    shutil.rmtree(tmp_path / "Training")


def test_every_ignored_entry_is_named_with_its_reason(messy):
    _put(messy / "train" / "cat" / "notes.txt", b"taken on the old scanner\n")
    result, _ = scan_dataset(detect_layout(messy))
    named = {str(Path(s.path).relative_to(messy)): s.reason for s in result.ignored_files}
    assert named["train/cat/notes.txt"] == "not an image file (.txt)"
    assert named["train/cat/labels.csv"] == "not an image file (.csv)"
    assert named["train/cat/._a.jpg"] == "hidden (name starts with a dot)"
    assert named["train/cat/.ipynb_checkpoints"] == "notebook checkpoint folder"
    assert named["train/dog/images/link_out.png"] == "symbolic link to outside the dataset"
    assert any(reason.startswith("mask folder") for reason in named.values())
    assert len(result.ignored_files) == sum(result.ignored.values()), "one named entry per counted one"


def test_the_split_report_lists_ignored_files_as_it_lists_skipped_ones(messy):
    from medtune.datasets.splitting import make_split

    _put(messy / "train" / "cat" / "notes.txt", b"x")
    result, _ = scan_dataset(detect_layout(messy))
    report = make_split(result, seed=1).report
    assert {"path": str(messy / "train" / "cat" / "notes.txt"), "reason": "not an image file (.txt)"} in report[
        "ignored_files"
    ]
    assert len(report["ignored_files"]) == sum(report["ignored"].values())
