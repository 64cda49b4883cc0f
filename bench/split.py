"""Benchmark 4: `split` on the whole of brain_mri/Training, first run and cached re-run.

    python bench/split.py            # prints a table and the ratio; target: first < 30 s, re-run < 3 s
    python bench/split.py --per-class 50 --keep-home   # a subset; keep the home (runs, caches) afterwards

Both runs go through the real step (scan, de-duplication, split, array cache, MLflow run) in a
fresh medtune home; the re-run finds every file in the scan index and the arrays in the cache.
"""

from __future__ import annotations

import argparse
import time

from _common import add_data_args, set_up, table


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(p)
    p.add_argument("--keep-home", action="store_true", help="keep the temporary medtune home (runs, caches)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    bench = set_up("split", args, threads=False)
    data, home = bench.data, bench.home
    from medtune.steps.split import SplitOptions, run_split

    rows = []
    outcomes = []
    for label in ("first run", "re-run (cached)"):
        t0 = time.perf_counter()
        out = run_split(SplitOptions(dataset=str(data), image_size=128), reuse_run=True)
        wall = time.perf_counter() - t0
        outcomes.append(out)
        n_files = out.result.report["accounted"]["files_seen"]
        rows.append(
            {
                "run": label,
                "wall_s": wall,
                "step_s (no tracking)": out.seconds,
                "files": n_files,
                "images_per_s": n_files / wall,
                "cache": "reused" if out.cache_reused else "built",
            }
        )
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


if __name__ == "__main__":
    main()
