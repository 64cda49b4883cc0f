"""Tests of the memory-mapped array cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from medtune.datasets import cache as cache_module
from medtune.datasets.cache import cache_key, ensure_cache, load_cache, manifest_hash
from medtune.errors import DataError

CLASSES = ["glioma", "no tumor"]


def make_manifest(prefix: str = "/data") -> pd.DataFrame:
    rows = []
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for label in CLASSES:
            for i in range(n):
                name = f"{split}-{label}-{i}"
                rows.append(
                    {
                        "path": f"{prefix}/{label}/{name}.png",
                        "label": label,
                        "split": split,
                        "sha256": hashlib.sha256(name.encode()).hexdigest(),
                        "phash": "0" * 16,
                        "source": "train",
                        "group": "",
                    }
                )
    return pd.DataFrame(rows)


def fake_image(path: str, size: int, channels: int) -> np.ndarray:
    seed = int(hashlib.sha256(path.rsplit("/", 1)[-1].encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)


class FakeDecoder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, paths: list[str], size: int, channels: int) -> np.ndarray:
        self.calls.append(list(paths))
        return np.stack([fake_image(p, size, channels) for p in paths])


def test_round_trip_and_reuse(tmp_path):
    manifest = make_manifest()
    decode = FakeDecoder()
    cached, reused = ensure_cache(manifest, CLASSES, 16, root=tmp_path, decode=decode)
    assert not reused
    assert cached.path == tmp_path / "arrays" / cache_key(manifest, 16, 3, CLASSES)
    assert cached.splits == ["train", "val", "test"]
    assert sum(len(c) for c in decode.calls) == len(manifest)
    for split in ("train", "val", "test"):
        x, y, paths = cached.x[split], cached.y[split], cached.paths[split]
        assert isinstance(x, np.memmap) and not x.flags.writeable
        assert x.shape == (len(paths), 16, 16, 3) and x.dtype == np.uint8 and y.dtype == np.int32
        expected = manifest.set_index("path").loc[paths]
        assert (expected["split"] == split).all()
        np.testing.assert_array_equal(y, [CLASSES.index(label) for label in expected["label"]])
        np.testing.assert_array_equal(x, np.stack([fake_image(p, 16, 3) for p in paths]))

    again, reused = ensure_cache(manifest.sample(frac=1.0, random_state=0), CLASSES, 16, root=tmp_path, decode=decode)
    assert reused and again.path == cached.path and len(decode.calls) == 3  # one call per split, none now
    loaded = load_cache(cached.path)
    for split in cached.x:
        np.testing.assert_array_equal(loaded.x[split], cached.x[split])
        np.testing.assert_array_equal(loaded.y[split], cached.y[split])
        assert loaded.paths[split] == cached.paths[split]
    assert (loaded.classes, loaded.image_size, loaded.channels) == (CLASSES, 16, 3)


def test_given_arrays_are_used_and_only_the_rest_decoded(tmp_path):
    manifest = make_manifest()
    given = {p: fake_image(p, 8, 1) for p in manifest["path"][:5]}
    decode = FakeDecoder()
    cached, _ = ensure_cache(manifest, CLASSES, 8, channels=1, root=tmp_path, arrays=given, decode=decode)
    decoded = [p for call in decode.calls for p in call]
    assert sorted(decoded) == sorted(set(manifest["path"]) - set(given))
    assert cached.x["train"].shape[-1] == 1


def test_other_image_size_or_class_order_builds_a_new_key(tmp_path):
    manifest = make_manifest()
    a, _ = ensure_cache(manifest, CLASSES, 16, root=tmp_path, decode=FakeDecoder())
    b, reused = ensure_cache(manifest, CLASSES, 24, root=tmp_path, decode=FakeDecoder())
    c, _ = ensure_cache(manifest, CLASSES[::-1], 16, root=tmp_path, decode=FakeDecoder())
    assert not reused and len({a.path, b.path, c.path}) == 3
    assert b.x["train"].shape[1:] == (24, 24, 3)
    np.testing.assert_array_equal(c.y["train"], 1 - a.y["train"])


def test_moved_dataset_reuses_the_cache_with_the_new_paths(tmp_path):
    a, _ = ensure_cache(make_manifest("/old"), CLASSES, 8, root=tmp_path, decode=FakeDecoder())
    b, reused = ensure_cache(make_manifest("/new"), CLASSES, 8, root=tmp_path, decode=FakeDecoder())
    assert reused and a.path == b.path
    assert [p.replace("/old", "/new") for p in a.paths["val"]] == b.paths["val"]


def test_manifest_hash_ignores_order_and_paths_but_not_labels():
    m = make_manifest()
    assert manifest_hash(m) == manifest_hash(m.iloc[::-1]) == manifest_hash(make_manifest("/elsewhere"))
    changed = m.copy()
    changed.loc[0, "split"] = "val"
    assert manifest_hash(changed) != manifest_hash(m)
    assert len(manifest_hash(m)) == 16


def test_failed_build_leaves_no_cache_directory(tmp_path):
    manifest = make_manifest()
    calls = []

    def failing(paths, size, channels):
        calls.append(paths)
        if len(calls) > 1:
            raise RuntimeError("decoder crashed")
        return np.stack([fake_image(p, size, channels) for p in paths])

    with pytest.raises(RuntimeError, match="decoder crashed"):
        ensure_cache(manifest, CLASSES, 8, root=tmp_path, decode=failing)
    assert list((tmp_path / "arrays").iterdir()) == []
    _, reused = ensure_cache(manifest, CLASSES, 8, root=tmp_path, decode=FakeDecoder())
    assert not reused


def test_wrong_decoder_output_and_unknown_labels_are_data_errors(tmp_path):
    manifest = make_manifest()
    with pytest.raises(DataError, match="decode returned"):
        ensure_cache(
            manifest, CLASSES, 8, root=tmp_path, decode=lambda p, s, c: np.zeros((len(p), s, s, c), np.float32)
        )
    with pytest.raises(DataError, match="not in classes"):
        ensure_cache(manifest, ["glioma"], 8, root=tmp_path, decode=FakeDecoder())
    with pytest.raises(DataError, match="channels"):
        ensure_cache(manifest, CLASSES, 8, channels=2, root=tmp_path, decode=FakeDecoder())
    assert list((tmp_path / "arrays").iterdir()) == []


def test_interrupted_build_left_by_a_dead_process_is_cleaned_up(tmp_path):
    manifest = make_manifest()
    key = cache_key(manifest, 8, 3, CLASSES)
    stale = tmp_path / "arrays" / f"{cache_module._build_prefix(key)}999999999-abc"
    stale.mkdir(parents=True)
    ensure_cache(manifest, CLASSES, 8, root=tmp_path, decode=FakeDecoder())
    assert not stale.exists()


def test_default_root_is_the_settings_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    cached, _ = ensure_cache(make_manifest(), CLASSES, 8, decode=FakeDecoder())
    assert cached.path.parent == (tmp_path / "cache" / "arrays").resolve()


def test_load_cache_of_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="missing or incomplete"):
        load_cache(tmp_path / "nothing")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a real full disk (skipped where this process may not mount one)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_a_one_line_error_naming_the_folder_and_leaves_nothing_to_trust(tiny_disk, tmp_path):
    manifest = make_manifest()
    with pytest.raises(DataError) as info:
        ensure_cache(manifest, CLASSES, 64, root=tiny_disk, decode=FakeDecoder())  # ~150 KB of arrays
    message = str(info.value)
    assert message.startswith(f"array cache folder {tiny_disk / 'arrays'}: cannot write the cache (No space left")
    assert "\n" not in message
    assert list((tiny_disk / "arrays").iterdir()) == []  # no half-written cache for a later run
    cache, reused = ensure_cache(manifest, CLASSES, 64, root=tmp_path / "roomy", decode=FakeDecoder())
    assert not reused and cache.x["train"].shape[1:] == (64, 64, 3)


def test_an_unwritable_cache_folder_is_a_one_line_error_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(
        DataError, match=rf"array cache folder {blocker / 'arrays'}: cannot write the cache \(Not a directory\)"
    ):
        ensure_cache(make_manifest(), CLASSES, 8, root=blocker, decode=FakeDecoder())
