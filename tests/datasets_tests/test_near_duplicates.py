"""Near duplicates of small images: candidates by hash, confirmed on pixels, counted in the report."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image, ImageEnhance

from medtune.datasets.dedup import PIXEL_CEILING, PIXEL_FLOOR, pixel_threshold
from medtune.datasets.layout import detect_layout
from medtune.datasets.scan import scan_dataset
from medtune.datasets.splitting import make_split
from medtune.datasets.synthetic import generate_phantom

SIZE = 28


def phantom(label: str, seed: int) -> Image.Image:
    return Image.fromarray(generate_phantom(label, np.random.default_rng(seed), SIZE)[0])


def lookalike_pairs(label: str, n: int = 400, wanted: int = 3) -> list[tuple[int, int]]:
    """Seeds of distinct phantoms whose 28 px hashes are within 4 bits (the old rule's false duplicates)."""
    hashes = [imagehash.phash(phantom(label, s).convert("L")) for s in range(n)]
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if hashes[a] - hashes[b] <= 4]
    return pairs[:wanted]


def copies(img: Image.Image) -> dict[str, Image.Image]:
    """The same picture resized by 4 % and slightly brightened (the JPEG copy is saved beside them)."""
    return {
        "resized": img.resize((SIZE + 1, SIZE + 1), Image.LANCZOS),
        "bright": ImageEnhance.Brightness(img).enhance(1.05),
    }


def test_copies_of_small_images_are_grouped_and_lookalikes_are_not(tmp_path):
    root = tmp_path / "small"
    pairs = lookalike_pairs("ring")
    assert len(pairs) >= 2  # the premise: distinct 28 px phantoms that the hash calls near
    for label in ("disc", "ring"):
        (root / label).mkdir(parents=True)
    for s in {s for pair in pairs for s in pair}:
        phantom("ring", s).save(root / "ring" / f"look_{s}.png")
    originals = [1000 + k for k in range(3)]
    for s in originals:
        img = phantom("disc", s)
        img.save(root / "disc" / f"orig_{s}.png")
        img.save(root / "disc" / f"orig_{s}_q75.jpg", quality=75)
        for kind, copy in copies(img).items():
            copy.save(root / "disc" / f"orig_{s}_{kind}.png")
    for s in range(6):  # more distinct images, so every split gets some
        phantom("disc", 2000 + s).save(root / "disc" / f"other_{s}.png")
        phantom("ring", 2000 + s).save(root / "ring" / f"other_{s}.png")

    scan, _ = scan_dataset(detect_layout(root), workers=1)
    result = make_split(scan, phash_distance=4)

    groups = [sorted(p.rsplit("/", 1)[1] for p in g["paths"]) for g in result.report["duplicate_groups"]["groups"]]
    for s in originals:  # each original with its three copies, nothing else
        assert [g for g in groups if f"orig_{s}.png" in g] == [
            sorted(f"orig_{s}{end}" for end in (".png", "_q75.jpg", "_resized.png", "_bright.png"))
        ]
    assert not any(name.startswith("look_") for g in groups for name in g)
    near = result.report["near_duplicate_pairs"]
    assert near["confirmed"] >= 2 * len(originals) and near["candidates"] >= near["confirmed"] + len(pairs)
    assert "normalised" in near["rule"]


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


def test_the_pixel_threshold_is_looser_for_small_images_and_bounded():
    assert pixel_threshold(28) > pixel_threshold(64) > pixel_threshold(512)
    assert pixel_threshold(8) == PIXEL_CEILING and pixel_threshold(512) == PIXEL_FLOOR
