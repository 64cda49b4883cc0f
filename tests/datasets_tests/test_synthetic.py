"""Tests of the procedural phantom dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medtune.datasets import synthetic
from medtune.datasets.synthetic import CLASSES, ensure_synthetic_dataset, generate, generate_phantom, load_lesion_masks
from medtune.errors import DataError


def _digests(root: Path) -> dict[str, str]:
    return {
        f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


def test_generate_same_seed_same_arrays_different_seed_different():
    a = generate(3, 48, seed=1)
    b = generate(3, 48, seed=1)
    c = generate(3, 48, seed=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_generate_shapes_dtypes_and_class_balance():
    images, labels, masks = generate(5, 40, seed=0)
    assert images.shape == (20, 40, 40, 3) and images.dtype == np.uint8
    assert masks.shape == (20, 40, 40) and masks.dtype == bool
    assert np.bincount(labels, minlength=len(CLASSES)).tolist() == [5] * len(CLASSES)
    # grey content stored as RGB
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()


def test_image_does_not_depend_on_n_per_class():
    small, _, _ = generate(2, 32, seed=3)
    large, _, _ = generate(4, 32, seed=3)
    np.testing.assert_array_equal(small[0:2], large[0:2])  # first class, first two images


def test_lesion_masks_are_non_empty_and_away_from_the_border():
    _, _, masks = generate(25, 64, seed=0)
    assert (masks.sum(axis=(1, 2)) > 10).all()
    border = masks[:, 0, :].any() or masks[:, -1, :].any() or masks[:, :, 0].any() or masks[:, :, -1].any()
    assert not border


def test_disc_lesion_is_brighter_than_its_surroundings():
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, mask = generate_phantom("disc", rng, 64)
        grey = image[..., 0].astype(float)
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min() - 4, ys.max() + 5, xs.min() - 4, xs.max() + 5
        around = np.zeros_like(mask)
        around[y0:y1, x0:x1] = True
        around &= ~mask
        assert grey[mask].mean() > grey[around].mean() + 10


def test_class_is_not_predictable_from_brightness_or_lesion_position():
    images, labels, masks = generate(100, 48, seed=0)
    grey = images[..., 0].astype(float)
    centroids = np.array([np.argwhere(m).mean(axis=0) for m in masks])
    features = np.column_stack([grey.mean(axis=(1, 2)), centroids])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    accuracy = cross_val_score(model, features, labels, cv=5).mean()
    assert accuracy < 0.40  # chance is 0.25


def test_generate_phantom_rejects_unknown_label_and_tiny_size():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="label"):
        generate_phantom("blob", rng, 64)
    with pytest.raises(DataError, match="size"):
        generate_phantom("disc", rng, 8)
    with pytest.raises(DataError, match="n_per_class"):
        generate(0, 64)


def test_dataset_files_are_byte_deterministic(tmp_path):
    a = ensure_synthetic_dataset(tmp_path / "a", n_per_class=3, image_size=32, seed=5)
    b = ensure_synthetic_dataset(tmp_path / "b", n_per_class=3, image_size=32, seed=5)
    c = ensure_synthetic_dataset(tmp_path / "c", n_per_class=3, image_size=32, seed=6)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert da == db
    pngs = [name for name in da if name.endswith(".png")]
    assert len(pngs) == 3 * len(CLASSES)
    assert sum(da[name] != dc[name] for name in pngs) == len(pngs)


def test_dataset_layout_and_pngs_decode_to_the_generated_arrays(tmp_path):
    root = ensure_synthetic_dataset(tmp_path / "phantoms", n_per_class=2, image_size=32, seed=0)
    images, labels, masks = generate(2, 32, seed=0)
    for label in CLASSES:
        assert sorted(p.name for p in (root / label).iterdir()) == [f"{label}_0000.png", f"{label}_0001.png"]
    decoded = np.asarray(Image.open(root / "ring" / "ring_0001.png").convert("RGB"))
    k = CLASSES.index("ring") * 2 + 1
    np.testing.assert_array_equal(decoded, images[k])
    lesion_masks = load_lesion_masks(root)
    assert sorted(lesion_masks) == sorted(f"{c}/{c}_{i:04d}.png" for c in CLASSES for i in range(2))
    np.testing.assert_array_equal(lesion_masks["ring/ring_0001.png"], masks[k])


def test_dataset_is_reused_and_regenerated_when_parameters_change(tmp_path):
    root = tmp_path / "phantoms"
    ensure_synthetic_dataset(root, n_per_class=2, image_size=32, seed=0)
    first = (root / "disc" / "disc_0000.png").stat().st_mtime_ns
    ensure_synthetic_dataset(root, n_per_class=2, image_size=32, seed=0)
    assert (root / "disc" / "disc_0000.png").stat().st_mtime_ns == first
    ensure_synthetic_dataset(root, n_per_class=3, image_size=32, seed=0)
    assert len(list((root / "disc").iterdir())) == 3
    assert len(load_lesion_masks(root)) == 3 * len(CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phantoms"]  # no temporary folders left


def test_dataset_refuses_to_overwrite_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="root"):
        ensure_synthetic_dataset(root, n_per_class=1, image_size=32)
    assert (root / "notes.txt").read_text() == "keep me"


def test_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(synthetic, "_write_npz", boom)
    with pytest.raises(RuntimeError):
        ensure_synthetic_dataset(tmp_path / "phantoms", n_per_class=1, image_size=32)
    assert list(tmp_path.iterdir()) == []


def test_load_lesion_masks_without_dataset_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="lesions.npz"):
        load_lesion_masks(tmp_path)
