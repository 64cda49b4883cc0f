"""Near duplicates of small images: candidates by hash, confirmed on pixels, counted in the report."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageEnhance

from medtune.datasets.dedup import PIXEL_LIMIT, SMALL_PIXEL_LIMIT, pixel_threshold
from medtune.datasets.layout import detect_layout
from medtune.datasets.scan import scan_dataset
from medtune.datasets.splitting import make_split
from medtune.datasets.synthetic import generate_phantom


def phantom(label: str, seed: int, size: int = 28) -> Image.Image:
    return Image.fromarray(generate_phantom(label, np.random.default_rng(seed), size)[0])


def lookalike_pairs(label: str, n: int = 400, wanted: int = 3) -> list[tuple[int, int]]:
    """Seeds of distinct phantoms whose 28 px hashes are within 4 bits (the old rule's false duplicates)."""
    hashes = [imagehash.phash(phantom(label, s).convert("L")) for s in range(n)]
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if hashes[a] - hashes[b] <= 4]
    return pairs[:wanted]


def write_copies(folder: Path, seed: int, size: int, kinds: tuple[str, ...]) -> list[str]:
    """An original phantom and its copies in ``folder``; returns their file names, sorted."""
    img = phantom("disc", seed, size)
    names = {f"orig_{seed}.png": (img, {})}
    made = {
        "bright": (ImageEnhance.Brightness(img).enhance(1.05), {}),
        "contrast": (ImageEnhance.Contrast(img).enhance(0.95), {}),
        "resaved": (img, {"format": "BMP"}),  # lossless: other bytes, the same pixels
        "q75": (img, {"format": "JPEG", "quality": 75}),
        "resized": (img.resize((size + max(1, size // 25),) * 2, Image.LANCZOS), {}),  # 4 % larger
    }
    for kind in kinds:
        names[f"orig_{seed}_{kind}.img"] = made[kind]
    for name, (copy, kwargs) in names.items():
        copy.save(folder / name, **{"format": "PNG", **kwargs})
    return sorted(names)


def split_groups(root: Path, phash_distance: int = 4) -> tuple[list[list[str]], dict]:
    scan, _ = scan_dataset(detect_layout(root), workers=1)
    report = make_split(scan, phash_distance=phash_distance).report
    groups = [sorted(Path(p).name for p in g["paths"]) for g in report["duplicate_groups"]["groups"]]
    return groups, report["near_duplicate_pairs"]


def test_small_images_group_identical_pixels_but_not_lookalikes(tmp_path):
    pairs = lookalike_pairs("ring")
    assert len(pairs) >= 2  # the premise: distinct 28 px phantoms that the hash calls near
    for label in ("disc", "ring"):
        (tmp_path / label).mkdir()
        for s in range(6):  # more distinct images, so every split gets some
            phantom(label, 2000 + s).save(tmp_path / label / f"other_{s}.png")
    for s in {s for pair in pairs for s in pair}:
        phantom("ring", s).save(tmp_path / "ring" / f"look_{s}.png")
    expected = [write_copies(tmp_path / "disc", 1000 + k, 28, ("bright", "contrast", "resaved")) for k in range(3)]

    groups, near = split_groups(tmp_path)

    assert groups == expected  # each original with its copies; no lookalike grouped
    assert near["confirmed"] == 3 * 6 and near["candidates"] >= near["confirmed"] + len(pairs)
    assert "normalised" in near["rule"]


def test_reencoded_and_resized_copies_are_grouped_at_64_px(tmp_path):
    for label in ("disc", "ring"):
        (tmp_path / label).mkdir()
        for s in range(6):
            phantom(label, 2000 + s, 64).save(tmp_path / label / f"other_{s}.png")
    expected = [write_copies(tmp_path / "disc", 1000 + k, 64, ("q75", "resized", "bright")) for k in range(3)]
    groups, near = split_groups(tmp_path)
    assert groups == expected
    assert near["confirmed"] == 3 * 6 <= near["candidates"]  # every pair of copies; no other pair


def test_distance_zero_counts_no_candidates(tmp_path):
    root = tmp_path / "d"
    for label in ("disc", "ring"):
        (root / label).mkdir(parents=True)
        for s in range(4):
            phantom(label, s).save(root / label / f"{s}.png")
        phantom(label, 0).save(root / label / "0_again.jpg", quality=90)
    scan, _ = scan_dataset(detect_layout(root), workers=1)
    near = make_split(scan, phash_distance=0).report["near_duplicate_pairs"]
    assert (near["candidates"], near["confirmed"]) == (0, 0)


def test_the_pixel_threshold_is_stricter_for_small_images():
    assert pixel_threshold(28) == pixel_threshold(63) == SMALL_PIXEL_LIMIT < PIXEL_LIMIT == pixel_threshold(64)
