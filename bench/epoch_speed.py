"""Benchmark (by hand, not in CI): where Lite0 fine-tuning time goes, per training step (issue 30).

One EfficientNet-Lite0 (ImageNet weights, built by ``medtune.models.build_model``), random images,
the same batch, in one process: seconds per training step (``train_on_batch``), images per second of a Keras ``fit`` over the same
number of steps (after a traced warm-up fit), and per inference batch for the
network in different trainable states, so each state's cost is read side by side:

* ``all trainable, BN training``: the whole network trained, BatchNorm in training mode (a raw fit);
* ``stage 2 (medtune)``: ``set_stage`` of the lite0_whole recipe: the top layers trainable,
  BatchNorm frozen in inference mode;
* ``stage 2, BN training``: the same layers trainable, BatchNorm trainable too;
* ``all trainable, BN frozen``: every layer but BatchNorm trainable;
* ``inference``: ``predict_on_batch`` of the stage-2 model.

    python bench/epoch_speed.py                     # 160 px, batch 32, 12 timed steps each
    python bench/epoch_speed.py --size 128 --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench._common import machine, table  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps after two warm-up steps")
    return parser.parse_args(argv)


def _variant(name: str, size: int):
    """A fresh Lite0 of the lite0_whole recipe in the trainable state ``name``, compiled."""
    import keras

    from medtune.models import build_model
    from medtune.models.transfer import Stage, set_stage
    from medtune.models.weights import resolve_weights
    from medtune.planning.recipes import RECIPES
    from medtune.training import compile_model

    params = dict(RECIPES["lite0_whole"])
    keras.utils.set_random_seed(0)
    model = build_model(params, (size, size, 3), 4, weights=resolve_weights("imagenet", ["efficientnet_lite0"]))
    base = model.get_layer("backbone")
    set_stage(model, Stage(2, 0, 1, 1e-4, params["fine_tune_layers"]))
    if name != "stage 2 (medtune)":
        for layer in base.layers:
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            if name == "all trainable, BN training":
                layer.trainable = True
            elif name == "all trainable, BN frozen":
                layer.trainable = not is_bn
    if name == "stage 2, BN training":  # the BatchNorm layers among the top ones trainable too
        for layer in base.layers[len(base.layers) - params["fine_tune_layers"] :]:
            layer.trainable = True
    compile_model(model, params)
    return model


def _time(fn, steps: int) -> float:
    fn()
    fn()  # traced and warm
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from medtune.training import configure_threads, release_model

    threads = configure_threads()
    print(machine(), f"threads intra/inter {threads}")
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, (args.batch * args.steps, args.size, args.size, 3)).astype("float32")
    ys = np.eye(4, dtype="float32")[rng.integers(0, 4, len(xs))]
    x, y = xs[: args.batch], ys[: args.batch]
    rows = []
    names = ("all trainable, BN training", "stage 2 (medtune)", "stage 2, BN training", "all trainable, BN frozen")
    for name in names:
        model = _variant(name, args.size)
        trainable = len(model.trainable_weights)
        step = _time(lambda m=model: m.train_on_batch(x, y), args.steps)
        model.fit(xs[: 2 * args.batch], ys[: 2 * args.batch], batch_size=args.batch, epochs=1, verbose=0)  # traced
        t0 = time.perf_counter()
        model.fit(xs, ys, batch_size=args.batch, epochs=1, verbose=0)  # Keras fit over the same steps
        fit = len(xs) / (time.perf_counter() - t0)
        rows.append(
            {
                "network": name,
                "trainable weights": trainable,
                "s per step": round(step, 3),
                "images/s": round(args.batch / step, 1),
                "fit images/s": round(fit, 1),
            }
        )
        if name == "stage 2 (medtune)":
            infer = _time(lambda m=model: m.predict_on_batch(x), args.steps)
            rows.append(
                {
                    "network": "inference (predict_on_batch)",
                    "trainable weights": "",
                    "s per step": round(infer, 3),
                    "images/s": round(args.batch / infer, 1),
                    "fit images/s": "",
                }
            )
        release_model(model)
    print(table(rows, f"Lite0 at {args.size} px, batch {args.batch}, {args.steps} timed steps each"))


if __name__ == "__main__":
    main()
