"""Benchmark (by hand, not in CI): calibration and prediction sets of a registered model on real data.

For each dataset, the registered model (default ``models:/medtune-<dataset>@champion`` in the bench
home; ``--train-minutes N`` makes one first with ``medtune main --budget N``) is scored on its own
split: the network without its temperature on the validation and test images, then, as final
training does, a temperature fitted on one half of the validation images and a conformal threshold on
the other, at 90 % and 95 %. Printed per dataset and level: the temperature, test ECE before and
after, test accuracy (unchanged by construction), coverage reached on the test images and the mean
set size; beside them the served model as registered (its temperature fitted by the code of its
day): its temperature, test ECE and macro ROC-AUC, against the ROC-AUC of today's refit in float32
as a served model computes it.

    python bench/calibration.py                                   # brain_mri and covid, champions
    python bench/calibration.py --datasets covid19_radiography --train-minutes 5 --per-class 300
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, shared_data, subset_folder, table, use_home  # noqa: E402

DATA = {"brain_mri": "brain_mri/Training", "covid19_radiography": "covid19_radiography"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="brain_mri,covid19_radiography")
    parser.add_argument("--home", default=None, help="medtune home (default ~/.cache/medtune-bench/calibration)")
    parser.add_argument("--model", default=None, help="model URI (default: models:/medtune-<dataset>@champion)")
    parser.add_argument("--train-minutes", type=float, default=0, help="first run `medtune main` with this budget")
    parser.add_argument("--per-class", type=int, default=0, help="with --train-minutes: first N images per class")
    parser.add_argument("--levels", default="0.9,0.95")
    return parser.parse_args(argv)


def train(dataset: str, home: Path, minutes: float, per_class: int) -> None:
    medtune = Path(sys.executable).parent / "medtune"
    cmd = [str(medtune), "main", "--dataset", dataset, "--budget", f"{minutes:g}m"]
    if dataset in DATA:  # any other name: a dataset medtune knows (synthetic, to try the benchmark out)
        data = shared_data(DATA[dataset].split("/")[0]).parent / DATA[dataset]
        data = subset_folder(data, home / "data" / dataset, per_class) if per_class else data
        cmd += ["--data-dir", str(data)]
    env = {**os.environ, "PATH": f"{medtune.parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(cmd, check=True, env=env, cwd=home)


def measure(dataset: str, model_uri: str, levels: list[float]) -> list[dict]:
    """One row per level: what the calibration of final training gives on this model's split."""
    import numpy as np

    from medtune import calibration
    from medtune.evaluation import manifest_test_set
    from medtune.metrics import classification_metrics, expected_calibration_error
    from medtune.serving import load_keras_from_uri
    from medtune.tracking.splits import load_split
    from medtune.training import predict_proba

    with tempfile.TemporaryDirectory() as tmp:
        model, meta = load_keras_from_uri(model_uri, Path(tmp))
    network = calibration.uncalibrated(model) or model  # as final training has it before calibrating
    split = load_split(dataset, int(meta["image_size"]), split_run=meta.get("split_run_id") or None)
    test = manifest_test_set(split)
    y_val = np.asarray(split.cache.y["val"])
    val, proba = predict_proba(network, split.cache.x["val"]), predict_proba(network, test.x)
    served = predict_proba(model, test.x)
    auc = lambda p: classification_metrics(test.y, p, split.classes)["test_roc_auc_macro"]  # noqa: E731
    fit, cal = calibration.split_validation(y_val, seed=42)  # train's default seed: its halves
    temperature = calibration.fit_temperature(val[fit], y_val[fit])
    scaled_val, scaled = calibration.scale(val, temperature), calibration.scale(proba, temperature)
    rows = []
    for level in levels:
        threshold = calibration.conformal_threshold(scaled_val[cal], y_val[cal], level)
        sets = calibration.prediction_set(scaled, split.classes, {"conformal_threshold": threshold})
        rows.append(
            {
                "dataset": dataset,
                "level": level,
                "n_val_fit/cal": f"{len(fit)}/{len(cal)}",
                "n_test": len(test.y),
                "temperature": temperature,
                "ece_before": expected_calibration_error(test.y, proba),
                "ece_after": expected_calibration_error(test.y, scaled),
                "accuracy": float((scaled.argmax(1) == test.y).mean()),
                "coverage": float(np.mean([split.classes[t] in s for t, s in zip(test.y, sets)])),
                "mean_set_size": float(np.mean([len(s) for s in sets])),
                "roc_auc_after": auc(scaled.astype(np.float32)),
                "served_temperature": calibration.temperature_of(model),
                "served_ece": expected_calibration_error(test.y, served),
                "served_roc_auc": auc(served),
            }
        )
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    home = use_home(Path(args.home or Path.home() / ".cache" / "medtune-bench" / "calibration"))
    print(machine())
    levels = [float(v) for v in args.levels.split(",")]
    rows = []
    for dataset in args.datasets.split(","):
        if args.train_minutes:
            train(dataset, home, args.train_minutes, args.per_class)
        rows += measure(dataset, args.model or f"models:/medtune-{dataset}@champion", levels)
    print(table(rows, f"Temperature scaling and split-conformal sets on each model's own split (home {home})"))


if __name__ == "__main__":
    main()
