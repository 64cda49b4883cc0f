"""Benchmark (by hand, not in CI): a budgeted ``main`` against the hand-made references, on many datasets.

Every case runs ``bench/budget.py`` (one process at a time, minutes are wall-clock): the careful
CNN and the plain Lite0 fine-tune, then ``main -P budget=<budget>``, all scored on the same
de-duplicated test split of the case. One table follows: accuracy with one standard error
(binomial, on the case's test images), macro-F1, macro ROC-AUC (binary: the positive class's AUC,
which is the same number), ECE, minutes.

Cases: the real sets under ../shared/data, ``synthetic``, any folder given with ``--folder``, and
derived ones this script builds from brain_mri in its home (never in the repository):

* ``brain_mri_28`` / ``brain_mri_64``: every image down-sampled to 28 / 64 px (PNG); their
  references also run at native size (28 px CNN, 32 px Lite0: its smallest input);
* ``brain_mri_small``: 75 images per class (a few hundred training images);
* ``brain_mri_binary``: tumour (glioma, meningioma, pituitary) against no tumour.

    python bench/suite.py --budget 30m                       # every case
    python bench/suite.py --budget 10m --cases covid19_radiography brain_mri_28
    python bench/suite.py --table                            # the recorded rows only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from _common import REPO, shared_data, table

CASES = {
    # name: (source under ../shared/data or a derived recipe, budget.py extras)
    "brain_mri": ("brain_mri/Training", []),
    "covid19_radiography": ("covid19_radiography", []),
    # its label conflicts leave seborrheic keratosis 2 training groups and no test image (SOURCE.md)
    "isic_skin": ("isic_skin", ["--exclude-classes", "seborrheic keratosis"]),
    "synthetic": ("synthetic", []),
    "brain_mri_28": ("derived:resize:28", ["--cnn-size", "28", "--lite0-size", "32"]),
    "brain_mri_64": ("derived:resize:64", ["--cnn-size", "64", "--lite0-size", "64"]),
    "brain_mri_small": ("derived:subset:75", []),
    "brain_mri_binary": ("derived:binary", []),
}
TUMOURS = ("glioma", "meningioma", "pituitary")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="30m", help="main's budget per case (default 30m)")
    p.add_argument("--cases", nargs="*", default=list(CASES), help=f"cases to run (default all: {' '.join(CASES)})")
    p.add_argument("--folder", nargs="*", default=[], help="more image folders to run as cases")
    p.add_argument("--home", default=str(Path.home() / ".cache" / "medtune-bench" / "suite"))
    p.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    return p.parse_args()


def derived(recipe: str, home: Path) -> Path:
    """The derived copy of brain_mri's training folder that ``recipe`` names, built once in ``home``."""
    from PIL import Image

    src = shared_data("brain_mri") / "Training"
    kind, _, arg = recipe.removeprefix("derived:").partition(":")
    out = home / "data" / f"brain_mri_{kind}{arg}"
    done = out / ".complete"
    if done.exists():
        return out
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file() and not f.name.startswith("."))
        if kind == "subset":
            files = files[: int(arg)]
        target = out / ("tumour" if cls.name in TUMOURS else "no_tumour") if kind == "binary" else out / cls.name
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            dst = target / f"{cls.name}_{f.name}" if kind == "binary" else target / f.name
            if kind == "resize":
                size = int(arg)
                with Image.open(f) as img:
                    img.convert("L").resize((size, size), Image.BILINEAR).save(dst.with_suffix(".png"))
            elif not dst.exists():
                os.link(f, dst)
    done.touch()
    return out


def run_case(name: str, source: str, extras: list[str], budget: str, home: Path) -> None:
    if source == "synthetic":
        data = ["--data", str(home / "data" / "synthetic"), "--dataset", "synthetic"]
        from medtune.datasets.synthetic import ensure_synthetic_dataset

        ensure_synthetic_dataset(home / "data" / "synthetic")
    elif source.startswith("derived:"):
        data = ["--data", str(derived(source, home)), "--dataset", name]
    else:
        data = ["--data", str(Path(source).resolve()) if Path(source).is_absolute() else source, "--dataset", name]
    cmd = [sys.executable, str(REPO / "bench" / "budget.py"), *data, "--budgets", budget, "--home", str(home / name)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run([*cmd, *extras], check=True)


def rows(home: Path) -> list[dict]:
    out = []
    for results in sorted(home.glob("*/results.json")):
        for row in json.loads(results.read_text()).values():
            n, acc = row.get("n_test"), row["accuracy"]
            out.append(
                {
                    "case": results.parent.name,
                    "row": row["row"],
                    "accuracy": round(acc, 4),
                    "± 1 SE": round(math.sqrt(acc * (1 - acc) / n), 4) if n else "",
                    "macro-F1": round(row["macro_f1"], 4),
                    "ROC-AUC": round(row["roc_auc"], 4),
                    "ECE": round(row["ece"], 4),
                    "minutes": round(row["minutes"], 1),
                    "test images": n or "",
                    "date": row["date"],
                }
            )
    return out


def main() -> None:
    args = parse_args()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    if not args.table:
        for name in args.cases:
            if name not in CASES:
                sys.exit(f"--cases: unknown case {name!r} (known: {', '.join(CASES)})")
            run_case(name, *CASES[name], args.budget, home)
        for folder in args.folder:
            run_case(Path(folder).name, str(Path(folder).resolve()), [], args.budget, home)
    recorded = rows(home)
    print(table(recorded, f"medtune main against the hand-made references ({home})") if recorded else "no rows yet")


if __name__ == "__main__":
    main()
