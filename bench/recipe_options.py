"""Benchmark: the recipe options of the auto spaces (weight averaging, mixup), side by side.

    python bench/recipe_options.py                        # base, ema, mixup: one train run each
    python bench/recipe_options.py --variants base ema    # some of them
    python bench/recipe_options.py --table                # the recorded rows

Each variant is ``mlflow run . --env-manager local -e train`` of the ``lite0_finetune`` recipe
(the recipe a budgeted ``main`` trains first) with one option changed, at the same image size,
epochs and seed, on the split ``bench/budget.py`` uses (same home), scored on the same
de-duplicated test images with the same scorer. Rows go to ``<home>/recipe_options.json``.
Run it alone on the machine: minutes are wall-clock.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from _common import kept_home, load_rows, save_row, table
from budget import logged_model_proba, mlflow_run, score, the_split

VARIANTS = {"base": {}, "ema": {"ema": True}, "mixup": {"mixup": 0.2}, "ema_mixup": {"ema": True, "mixup": 0.2}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="brain_mri/Training", help="folder under ../shared/data")
    p.add_argument("--dataset", default=None, help="medtune dataset name (default: from --data)")
    p.add_argument("--home", default=None, help="the home bench/budget.py uses (its split is shared)")
    p.add_argument("--variants", nargs="*", default=["base", "ema", "mixup"], choices=list(VARIANTS))
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=11, help="head epoch plus fine-tuning epochs (default 11)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    p.add_argument("--quick", action="store_true", help="2 epochs at 64 px, to check that it runs")
    return p.parse_args()


def run_variant(name: str, args, data: Path, dataset: str, home: Path) -> dict:
    from medtune.planning.recipes import RECIPES

    params = home / f"recipe-{name}.yaml"
    params.write_text(yaml.safe_dump({**RECIPES["lite0_finetune"], **VARIANTS[name]}))
    given = {
        "dataset": dataset,
        "data_dir": data,
        "params": params,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "patience": args.epochs,  # no early stop inside the cosine schedule
        "seed": args.seed,
        "tta": "none",
    }
    train, minutes = mlflow_run("train", given, dataset, home)
    split, test = the_split(dataset, data, args.image_size)
    proba = logged_model_proba(train.info.run_id, test.x)
    row = score(name, test.y, proba, split.classes, minutes, test.split_id, {"train_run": train.info.run_id})
    row["val_macro_f1"] = train.data.metrics.get("val_macro_f1")
    return row


def print_table(path: Path) -> None:
    rows = load_rows(path)
    if not rows:
        print(f"no rows recorded in {path}")
        return
    cols = ("row", "accuracy", "macro_f1", "roc_auc", "ece", "val_macro_f1", "minutes", "test_split")
    out = [{c: round(r[c], 4) if isinstance(r.get(c), float) else r.get(c) for c in cols} for r in rows.values()]
    print(table(out, "lite0_finetune recipe with one option changed, same split, seed and epochs"))


def main() -> None:
    args = parse_args()
    data, home, dataset = kept_home(args)
    results = home / "recipe_options.json"
    if args.table:
        print_table(results)
        return
    if args.quick:
        args.epochs, args.image_size = 2, 64
    for name in args.variants:
        row = run_variant(name, args, data, dataset, home)
        if args.seed != 42:
            row["row"] = f"{name}_seed{args.seed}"
        save_row(results, row["row"], row)
        print(f"{name}: accuracy {row['accuracy']:.4f}, macro-F1 {row['macro_f1']:.4f}, {row['minutes']:.1f} min")
    print_table(results)


if __name__ == "__main__":
    main()
