"""Benchmark 4: `split` on the whole of brain_mri/Training, first run and cached re-run.

    python bench/split.py            # prints a table and the ratio; target: first < 30 s, re-run < 3 s
    python bench/split.py --per-class 50 --keep-home   # a subset; keep the home (runs, caches) afterwards
    python bench/split.py --per-class 150 --formats    # also the same images as PNG and as DICOM

Both runs go through the real step (scan, de-duplication, split, array cache, MLflow run) in a
fresh medtune home; the re-run finds every file in the scan index and the arrays in the cache.
With ``--formats`` the images are written again in the home, as 8-bit grey PNG and as 16-bit
DICOM (12 bits stored, no window: min/max scaling), and each copy is split twice the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import REPO, add_data_args, set_up, table


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(p)
    p.add_argument("--keep-home", action="store_true", help="keep the temporary medtune home (runs, caches)")
    p.add_argument("--formats", action="store_true", help="also split PNG and DICOM copies of the same images")
    return p.parse_args()


def converted(src: Path, dst: Path, fmt: str) -> Path:
    """Every image of ``src``'s class folders as grey ``png`` or ``dicom`` in ``dst`` (one PatientID per file)."""
    import numpy as np
    from PIL import Image

    from medtune.datasets.images import open_image

    sys.path.insert(0, str(REPO))
    from tests.dicom_files import dicom_bytes

    for k, f in enumerate(sorted(p for p in src.rglob("*") if p.is_file())):
        grey = np.asarray(open_image(f).convert("L"))
        out = dst / f.parent.relative_to(src) / f"{f.stem}.{'png' if fmt == 'png' else 'dcm'}"
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            Image.fromarray(grey).save(out)
        else:
            out.write_bytes(dicom_bytes(grey.astype(np.uint16) * 16, bits_stored=12, patient_id=f"P{k}"))
    return dst


def split_twice(data: Path, fmt: str) -> tuple[list[dict], list]:
    from medtune.steps.split import SplitOptions, run_split

    rows, outcomes = [], []
    for label in ("first run", "re-run (cached)"):
        t0 = time.perf_counter()
        out = run_split(SplitOptions(dataset=str(data), image_size=128), reuse_run=True)
        wall = time.perf_counter() - t0
        outcomes.append(out)
        n_files = out.result.report["accounted"]["files_seen"]
        rows.append(
            {
                "files as": fmt,
                "run": label,
                "wall_s": wall,
                "step_s (no tracking)": out.seconds,
                "files": n_files,
                "images_per_s": n_files / wall,
                "cache": "reused" if out.cache_reused else "built",
            }
        )
    return rows, outcomes


def main() -> None:
    args = parse_args()
    bench = set_up("split", args, threads=False)
    data, home = bench.data, bench.home
    rows, outcomes = split_twice(data, "as given")
    first, second = outcomes
    manifest = first.result.manifest
    straddling = int((manifest.groupby("sha256")["split"].nunique() > 1).sum())
    acc = first.result.report["accounted"]
    print(table(rows, f"split on {data} (home {home})"))
    print(f"ratio first/re-run wall: {rows[0]['wall_s'] / rows[1]['wall_s']:.1f}x")
    print(
        f"kept {acc['kept']}, skipped {acc['skipped']}, removed duplicates {acc['removed_duplicates']}, "
        f"label conflicts {acc['conflicted']}; files seen {acc['files_seen']}; accounted: {acc['ok']}"
    )
    print(
        f"sha256 values in more than one split: {straddling}; same manifest on re-run: "
        f"{first.manifest_hash == second.manifest_hash}"
    )
    print(
        f"targets: first < 30 s -> {'met' if rows[0]['wall_s'] < 30 else 'MISSED'}; "
        f"re-run < 3 s -> {'met' if rows[1]['wall_s'] < 3 else 'MISSED'}"
    )
    if args.formats:
        t0 = time.perf_counter()
        copies = {fmt: converted(data, home / "formats" / f"{data.name}-{fmt}", fmt) for fmt in ("png", "dicom")}
        print(f"\nwrote the PNG and DICOM copies in {time.perf_counter() - t0:.0f} s (not timed below)")
        both = [row for fmt, folder in copies.items() for row in split_twice(folder, fmt)[0]]
        print(table(both, f"the same {both[0]['files']} images of {data} as PNG and as DICOM"))
        png, dcm = both[0], both[2]
        print(
            f"DICOM/PNG images per second: first run {dcm['images_per_s'] / png['images_per_s']:.2f}x, "
            f"re-run {both[3]['images_per_s'] / both[1]['images_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
