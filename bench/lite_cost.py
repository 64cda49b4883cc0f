"""Benchmark (by hand, not in CI): per-image cost of EfficientNet-Lite1 and Lite2 relative to Lite0.

For each image size, the three backbones are built by ``medtune.models.build_model`` with their
ImageNet weights (the ``lite0_whole`` recipe's head and optimiser, backbone swapped), put in the
fine-tuning state that recipe trains (every backbone layer trainable, BatchNorm frozen in
inference mode, ``set_stage``) and held in memory together. Then ``--turns`` times,
each backbone in turn (the order rotating) times one training step (``train_on_batch``), then
each one inference batch (``predict_on_batch``), of the same random images. Interleaving single
steps keeps the ratios fair when other jobs share the cores; the table gives the median seconds
per image and each backbone's ratio to Lite0 (median of the per-turn ratios, interquartile range).

    python bench/lite_cost.py                        # 160, 192 and 240 px, batch 32, 12 turns
    python bench/lite_cost.py --sizes 128 --turns 6
    python bench/lite_cost.py --quick                # 64 px, 2 turns: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench._common import machine, table  # noqa: E402

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 192, 240])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--turns", type=int, default=12, help="timed steps per backbone (after 2 warm-up)")
    parser.add_argument("--quick", action="store_true", help="64 px, 2 turns")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.turns = [64], 2
    return args


def _fine_tuning(backbone: str, size: int):
    """``backbone`` with ImageNet weights in the lite0_whole recipe's stage-2 state, whole backbone, compiled."""
    import keras

    from medtune.models import build_model
    from medtune.models.transfer import Stage, set_stage
    from medtune.models.weights import resolve_weights
    from medtune.planning.recipes import RECIPES
    from medtune.training import compile_model

    params = {**RECIPES["lite0_whole"], "backbone": backbone}
    keras.utils.set_random_seed(0)
    model = build_model(params, (size, size, 3), 4, weights=resolve_weights("imagenet", [backbone]))
    layers = len(model.get_layer("backbone").layers)
    set_stage(model, Stage(2, 0, 1, 1e-4, layers))
    compile_model(model, params)
    return model, layers


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(size: int, args, rng) -> list[dict]:
    """Rows of one size: median seconds per image and ratios to Lite0, train and inference."""
    import numpy as np

    from medtune.training import release_model

    x = rng.integers(0, 256, (args.batch, size, size, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, args.batch)]
    models = {name: _fine_tuning(name, size) for name in LITES}
    calls = {
        "train": {n: (lambda m=m: m.train_on_batch(x, y)) for n, (m, _) in models.items()},
        "infer": {n: (lambda m=m: m.predict_on_batch(x)) for n, (m, _) in models.items()},
    }
    for kind in calls:  # traced and warm
        for fn in calls[kind].values():
            fn(), fn()
    seconds = {(n, kind): [] for n in LITES for kind in calls}
    for step in range(args.turns):  # one step each in turn, the order rotating
        order = LITES[step % 3 :] + LITES[: step % 3]
        for kind in calls:
            for name in order:
                seconds[(name, kind)].append(_timed(calls[kind][name]))
    rows = []
    for name in LITES:
        row = {"px": size, "backbone": name, "backbone layers": models[name][1]}
        for kind in calls:
            ratios = [a / b for a, b in zip(seconds[(name, kind)], seconds[(LITES[0], kind)])]
            q1, q3 = np.percentile(ratios, [25, 75])
            row[f"{kind} ms/img"] = round(statistics.median(seconds[(name, kind)]) / args.batch * 1e3, 2)
            row[f"{kind} x Lite0"] = f"{statistics.median(ratios):.2f} ({q1:.2f}-{q3:.2f})"
        rows.append(row)
        print(f"  {size} px {name}: {row}", flush=True)
    for model, _ in models.values():
        release_model(model)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from medtune.training import configure_threads

    threads = configure_threads()
    print(machine(), f"threads intra/inter {threads}")
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        rows += measure(size, args, rng)
    print(
        table(
            rows,
            f"per image, batch {args.batch}, {args.turns} interleaved turns: "
            "train = one fine-tuning step (whole backbone, BatchNorm frozen), infer = predict_on_batch; "
            "x Lite0 = median per-turn ratio (interquartile range)",
        )
    )


if __name__ == "__main__":
    main()
