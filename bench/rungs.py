"""Benchmark: image size as the search's fidelity (resolution rungs) against a single-size search.

    python bench/rungs.py                        # both searches, 20 minutes each, on brain_mri
    python bench/rungs.py --budget 10m --only single
    python bench/rungs.py --table                # the recorded rows
    python bench/rungs.py --quick                # tiny budget, to check that the script runs

Two ``medtune search`` runs on the same split, with the same time budget, space (``auto_cpu``),
warm start (the documented recipes first), median pruner, seed and epochs per trial (3):

* ``rungs``: ``image_sizes=80,128,160``, one epoch per rung, the pruner deciding at each rung's end;
* ``single``: every epoch at 160 px, the pruner deciding after every epoch.

Each row records the search's best validation objective (macro-F1) and that trial's validation
accuracy, the trials it completed, pruned and started, and the minutes used. Both searches score
their trials at 160 px on the same validation images, so the best values compare directly; the
winner is the budgeted ``main``'s default. Rows accumulate in ``<home>/rungs.json`` (the home of
``bench/budget.py``, so the split is the one the budget benchmark scores on).
Heavy: do not run beside other TensorFlow jobs (minutes are wall-clock).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import kept_home, load_rows, machine, save_row, table

SIZES = {"rungs": "80,128,160", "single": "160"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="brain_mri/Training", help="folder under ../shared/data")
    p.add_argument("--budget", default="20m", help="each search's time budget (default 20m)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3: one per rung)")
    p.add_argument("--only", choices=sorted(SIZES), default=None, help="run one of the two searches")
    p.add_argument("--home", default=None, help="medtune home (default: bench/budget.py's for this data)")
    p.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    p.add_argument("--quick", action="store_true", help="a 2-minute budget and 2 epochs, to check that it runs")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args()


def run_search(name: str, args, data: Path, dataset: str, home: Path) -> dict:
    bin_dir = Path(sys.executable).parent
    study = f"bench-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [
        str(bin_dir / "medtune"),
        "search",
        "--dataset",
        dataset,
        "--data-dir",
        str(data),
        "--space",
        "auto_cpu",
        "--epochs",
        str(args.epochs),
        "--image-sizes",
        SIZES[name],
        "--budget",
        args.budget,
        "--pruner",
        "median",
        "--warm-start",
        "recipes",
        "--seed",
        str(args.seed),
        "--study",
        study,
    ]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(cmd, check=True, cwd=home, env=env)
    minutes = (time.perf_counter() - t0) / 60
    return {"row": name, "image_sizes": SIZES[name], **read_back(study, dataset), "minutes": minutes}


def read_back(study: str, dataset: str) -> dict:
    """The search run's outcome, from the tracking store."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name(f"medtune-{dataset}")
    run = client.search_runs(
        [experiment.experiment_id],
        f"tags.`medtune.step` = 'search' and tags.`medtune.study` = '{study}'",
        max_results=1,
    )[0]
    m, tags = run.data.metrics, run.data.tags
    best_run = client.get_run(tags["medtune.best_run_id"]) if tags.get("medtune.best_run_id") else None
    return {
        "best_val_macro_f1": m.get("best_val_macro_f1"),
        "best_val_accuracy": best_run.data.metrics.get("val_accuracy") if best_run else None,
        "best_trial": tags.get("medtune.best_trial"),
        "best_recipe": best_run.data.tags.get("medtune.recipe", "-") if best_run else None,
        "complete": int(m.get("trials_complete", 0)),
        "pruned": int(m.get("trials_pruned", 0)),
        "started": int(m.get("trials_total", 0)),
        "budget_min": float(m.get("budget_planned_s", float("nan"))) / 60,
        "stop_reason": tags.get("medtune.stop_reason", ""),
        "search_run": run.info.run_id,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
    }


def print_table(home: Path) -> None:
    rows = list(load_rows(home / "rungs.json").values())
    if not rows:
        print(f"no rows recorded in {home / 'rungs.json'}")
        return
    cols = ("row", "image_sizes", "best_val_macro_f1", "best_val_accuracy", "best_recipe", "complete", "pruned")
    cols += ("started", "minutes", "date")
    shown = [{c: round(r[c], 4) if isinstance(r[c], float) else r[c] for c in cols} for r in rows]
    print(table(shown, "Resolution rungs vs one image size, same time budget (validation, best trial)"))


def main() -> None:
    args = parse_args()
    data, home, dataset = kept_home(args)
    if args.table:
        print_table(home)
        return
    if args.quick:
        args.budget, args.epochs = "2m", 2
    for name in [args.only] if args.only else list(SIZES):
        row = run_search(name, args, data, dataset, home)
        save_row(home / "rungs.json", name, row)
        print(
            f"{name}: best val macro-F1 {row['best_val_macro_f1']}, {row['started']} trials, {row['minutes']:.1f} min"
        )
    print_table(home)


if __name__ == "__main__":
    main()
