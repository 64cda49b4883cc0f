"""Benchmark: near-duplicate candidates (hash) and confirmations (pixels) on real images at three sizes.

    nice -n 15 python bench/near_duplicates.py                 # brain_mri, isic_skin, covid19_radiography
    nice -n 15 python bench/near_duplicates.py --sets isic_skin --copies 20

For each set under ../shared/data it builds three cases in --work (default /tmp/medtune-near):
the images at native size (copied), and down-sampled to 64 and 28 px (PIL Lanczos, saved as
PNG). Beside --copies originals per set it writes three known copies: JPEG quality 75, resized
by 4 % (at least one pixel), and brightness x1.05. Each case is scanned by medtune's scan, then
the candidate pairs (hash within --distance bits) are confirmed by medtune.datasets.dedup.

A candidate pair is judged by where it came from: ``copy`` (a known copy, or byte-identical
originals), ``same in source`` (two different files of the same picture in the original set:
their native images, 64x64 grey and normalised, differ by under 0.03), ``unclear`` (0.03 to 0.1:
often the same slice at another resolution or window, sometimes its neighbour) or ``distinct``
(0.1 and more: another image, often the next slice of one scan). A confirmed distinct pair is a
false duplicate; a known copy not grouped is a missed one. ``--sweep`` prints what other pixel
limits would confirm (how the limits in medtune.datasets.dedup were chosen). The shared data is
only read; the cases are rebuilt on each run.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from _common import shared_data, table

SETS = {"brain_mri": "brain_mri/Training", "isic_skin": "isic_skin", "covid19_radiography": "covid19_radiography"}
SUFFIXES = {".jpg", ".jpeg", ".png"}
SAME_IN_SOURCE = 0.03
CLEARLY_DISTINCT = 0.1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--sizes", nargs="+", default=["native", "64", "28"])
    p.add_argument("--copies", type=int, default=40, help="originals per set that get three known copies")
    p.add_argument("--distance", type=int, default=4, help="phash_distance (medtune's default)")
    p.add_argument("--work", type=Path, default=Path("/tmp/medtune-near"))
    p.add_argument("--sweep", action="store_true", help="also print what other pixel limits would confirm")
    return p.parse_args()


def build_case(source: Path, out: Path, size: str, chosen: set[Path]) -> dict[str, str]:
    """Write one case; returns {written path: sha256 of the original file it shows}."""
    origin = {}
    for src in sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES):
        dst = out / src.relative_to(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        if size == "native":
            shutil.copyfile(src, dst)
            img = Image.open(dst).convert("RGB")
        else:
            img = Image.open(src).convert("RGB").resize((int(size),) * 2, Image.LANCZOS)
            dst = dst.with_suffix(".png")
            img.save(dst)
        origin[str(dst)] = sha
        if src in chosen:
            w, h = img.size
            grow = max(1, round(0.04 * min(w, h)))
            copies = {
                "q75.jpg": (img, {"quality": 75}),
                "resized.png": (img.resize((w + grow, h + grow), Image.LANCZOS), {}),
                "bright.png": (ImageEnhance.Brightness(img).enhance(1.05), {}),
            }
            for name, (copy, kwargs) in copies.items():
                path = dst.with_name(f"{dst.stem}__copy_{name}")
                copy.save(path, **kwargs)
                origin[str(path)] = sha
    return origin


def native_grey(path: str, cache: dict) -> np.ndarray:
    if path not in cache:
        a = np.asarray(Image.open(path).convert("L").resize((64, 64), Image.BOX), dtype=np.float32)
        a = a - a.mean()
        cache[path] = a / max(float(a.std()), 1e-3)
    return cache[path]


def _copy_kind(a: str, b: str) -> str:
    kinds = sorted(p.split("__copy_")[1].split(".")[0] for p in (a, b) if "__copy_" in p)
    return "+".join(kinds) or "original"


def run_case(
    name: str, size: str, root: Path, origin: dict[str, str], native_of: dict[str, str], distance: int, sweep: bool
) -> dict:
    from medtune.datasets import dedup
    from medtune.datasets.layout import detect_layout
    from medtune.datasets.scan import scan_dataset

    t0 = time.perf_counter()
    scan, _ = scan_dataset(detect_layout(root), workers=1)
    scan_s = time.perf_counter() - t0
    records = sorted(scan.records, key=lambda r: r.path)
    t0 = time.perf_counter()
    pairs = dedup.candidate_pairs(records, distance)
    dist = dedup.pixel_distances(records, pairs)
    confirm_s = time.perf_counter() - t0
    sides = np.array([min(r.width, r.height) for r in records])
    limit = np.array([dedup.pixel_threshold(s) for s in np.minimum(sides[pairs[:, 0]], sides[pairs[:, 1]])])
    confirmed = dist <= limit
    cache: dict = {}
    kinds, refs = [], []
    for i, j in pairs.tolist():
        a, b = records[i].path, records[j].path
        if origin[a] == origin[b]:
            kinds.append("copy")
            refs.append(0.0)
            continue
        ref = float(np.abs(native_grey(native_of[origin[a]], cache) - native_grey(native_of[origin[b]], cache)).mean())
        refs.append(ref)
        kinds.append("same" if ref < SAME_IN_SOURCE else "distinct")
    kinds = np.array(kinds)
    refs = np.array(refs)
    kinds[(kinds == "distinct") & (refs < CLEARLY_DISTINCT)] = "unclear"
    if sweep:
        copy_kind = np.array([_copy_kind(records[i].path, records[j].path) for i, j in pairs.tolist()])
        for t in (0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.12, 0.15, 0.18):
            ok = dist <= t
            copies = kinds == "copy"
            by_kind = {str(k): f"{ok[copies & (copy_kind == k)].mean():.2f}" for k in sorted(set(copy_kind[copies]))}
            print(
                f"  {name} {size} limit {t}: copies {ok[kinds == 'copy'].mean():.2f} {by_kind}, "
                f"distinct confirmed {int(ok[kinds == 'distinct'].sum())}/{int((kinds == 'distinct').sum())}"
            )
    groups = dedup.find_duplicates(records, distance).groups
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    index = {r.path: i for i, r in enumerate(records)}
    by_stem = {p.rsplit(".", 1)[0]: i for p, i in index.items() if "__copy_" not in p}
    copies = [(i, by_stem[p.split("__copy_")[0]]) for p, i in index.items() if "__copy_" in p]
    found = sum(1 for c, o in copies if group_of.get(c) is not None and group_of.get(c) == group_of.get(o))
    test = {i for i, r in enumerate(records) if r.source == "test"}

    def dropped(mask: np.ndarray) -> int:  # official test images paired with a training image
        hit = set()
        for i, j in pairs[mask].tolist():
            if (i in test) != (j in test):
                hit.add(i if i in test else j)
        return len(hit)

    return {
        "case": f"{name} {size}",
        "images": len(records),
        "candidates": len(pairs),
        "confirmed": int(confirmed.sum()),
        "copy pairs conf/cand": f"{int((confirmed & (kinds == 'copy')).sum())}/{int((kinds == 'copy').sum())}",
        "same-in-source conf/cand": f"{int((confirmed & (kinds == 'same')).sum())}/{int((kinds == 'same').sum())}",
        "unclear conf/cand": f"{int((confirmed & (kinds == 'unclear')).sum())}/{int((kinds == 'unclear').sum())}",
        "distinct conf/cand": f"{int((confirmed & (kinds == 'distinct')).sum())}/{int((kinds == 'distinct').sum())}",
        "copies grouped": f"{found}/{len(copies)}",
        "test dropped hash/pixels": f"{dropped(np.ones(len(pairs), bool))}/{dropped(confirmed)}" if test else "-",
        "scan s": scan_s,
        "confirm s": confirm_s,
    }


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name in args.sets:
        source = shared_data(SETS[name])
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
        chosen = {files[k] for k in rng.choice(len(files), args.copies, replace=False)}
        native_of = {hashlib.sha256(p.read_bytes()).hexdigest(): str(p) for p in files}
        for size in args.sizes:
            root = args.work / f"{name}_{size}"
            shutil.rmtree(root, ignore_errors=True)
            origin = build_case(source, root, size, chosen)
            rows.append(run_case(name, size, root, origin, native_of, args.distance, args.sweep))
            print(table(rows[-1:], ""), flush=True)
    print(table(rows, f"near duplicates, phash_distance={args.distance}, {args.copies} originals x 3 copies per set"))


if __name__ == "__main__":
    main()
