"""Benchmark (by hand, not in CI): Lite0 fine-tuning and inference speed, before and after the fold (issue 30).

On real brain_mri images (``../shared/data/brain_mri/Training``), at each size, in one process,
one job at a time, images per second of:

* (a) a raw Keras ``fit`` of the whole network (every layer trainable, BatchNorm in training mode);
* (b) the same Lite0 in medtune's stage-2 state (``set_stage`` of the lite0_whole recipe: the top
  140 layers trainable, BatchNorm frozen), raw ``fit``, plain and through the fold
  (:func:`medtune.models.folding.training_view`);
* (c) medtune's real stage-2 epoch: ``fit_stages`` over three stage-2 epochs with everything
  final training runs (validation scores, precise BatchNorm, early stopping, best weights), plain
  and folded; the median of the epochs after the first (which traces the graphs);
* (d) inference through ``predict_proba`` of the trained single model and of a 3-member
  ensemble, plain and folded in turn.

"plain" is the path before issue 30 (the fold switched off in this process); "folded" is today's.
(a) and (b) take turns, epoch by epoch, and keep each one's best epoch; (d) the best of three passes.

    python bench/epoch_speed.py                        # 128 and 160 px, 1,024 training images
    python bench/epoch_speed.py --sizes 160 --images 3847
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench._common import machine, shared_data, table  # noqa: E402

BATCH = 32


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160])
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--val", type=int, default=256, help="validation images")
    parser.add_argument(
        "--turns", type=int, default=2, help="raw-fit epochs per network, taken in turn (the best counts)"
    )
    return parser.parse_args(argv)


def _images(n: int, size: int, seed: int = 0):
    """``n`` training-folder images of brain_mri (classes balanced by chance), decoded at ``size``."""
    import numpy as np

    from medtune.datasets.images import decode_many

    root = shared_data("brain_mri") / "Training"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]
    pick = np.random.default_rng(seed).permutation(len(files))[:n]
    x = decode_many([files[i][0] for i in pick], size, 3)
    y = np.array([files[i][1] for i in pick], dtype="int32")
    return x, y, len(classes)


def _lite0(size: int, n_classes: int, state: str):
    import keras

    from medtune.models import build_model
    from medtune.models.transfer import Stage, set_stage
    from medtune.models.weights import resolve_weights
    from medtune.planning.recipes import RECIPES

    params = dict(RECIPES["lite0_whole"])
    keras.utils.set_random_seed(0)
    model = build_model(params, (size, size, 3), n_classes, weights=resolve_weights("imagenet", ["efficientnet_lite0"]))
    set_stage(model, Stage(2, 0, 1, 1e-4, params["fine_tune_layers"]))
    if state == "whole":
        for layer in model.get_layer("backbone").layers:
            layer.trainable = True
    return model, params


def _fit_rates(nets, params, x, y, n_classes, turns: int) -> list[float]:
    """Images per second of a raw ``fit`` of each net, the best of ``turns`` epochs taken in turn
    (nets interleaved, so a busy moment slows them alike)."""
    import numpy as np

    from medtune.training import compile_model

    onehot = np.eye(n_classes, dtype="float32")[y]
    for net in nets:
        compile_model(net, params)
        net.fit(x[: 2 * BATCH], onehot[: 2 * BATCH], batch_size=BATCH, epochs=1, verbose=0)  # traced
    best = [0.0] * len(nets)
    for _ in range(turns):
        for i, net in enumerate(nets):
            t0 = time.perf_counter()
            net.fit(x, onehot, batch_size=BATCH, epochs=1, verbose=0)
            best[i] = max(best[i], len(x) / (time.perf_counter() - t0))
    return best


def _medtune_epochs(data, n_classes, epochs: int = 3):
    """Seconds of a steady stage-2 epoch of ``fit_stages`` with final training's callbacks (the
    median of the epochs after the first, which traces), and the trained model."""
    import numpy as np

    from medtune import training
    from medtune.models.transfer import stage_plan
    from medtune.models.weights import resolve_weights
    from medtune.planning.recipes import RECIPES

    x, y, xv, yv = data
    params = dict(RECIPES["lite0_whole"])
    weights = resolve_weights("imagenet", ["efficientnet_lite0"])
    setup = training.prepare_fit(params, x, y, xv, yv, n_classes, seed=0, weights=weights)
    first = stage_plan(params, 30)[1].first_epoch
    callbacks = [
        *setup.callbacks,
        training.StagedEarlyStopping(monitor="val_macro_f1", mode="max", patience=5, restore_best_weights=True),
        training.BestWeights(setup.model.weights),
    ]
    history = training.fit_stages(
        setup.model,
        params,
        setup.train_ds,
        setup.val_ds,
        y_val=yv,
        epochs=30,
        window=(first, first + epochs),
        callbacks=callbacks,
    )
    return float(np.median(history["epoch_seconds"][1:])), setup.model


def _infer_rate(model, x, turns: int = 3) -> float:
    from medtune.training import predict_proba

    predict_proba(model, x[:BATCH])  # traced
    best = 0.0
    for _ in range(turns):
        t0 = time.perf_counter()
        predict_proba(model, x)
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import medtune.models.folding as folding
    from medtune.models.ensemble import build_ensemble
    from medtune.training import configure_threads, release_model

    threads = configure_threads()
    print(machine(), f"threads intra/inter {threads}")
    real = folding.training_view, folding.inference_view
    plain = (lambda m: m), (lambda m: m)
    rows = []
    for size in args.sizes:
        x, y, n_classes = _images(args.images + args.val, size)
        xt, yt, xv, yv = x[: args.images], y[: args.images], x[args.images :], y[args.images :]
        row = {"size": size}
        whole, params = _lite0(size, n_classes, "whole")
        stage2, _ = _lite0(size, n_classes, "stage 2")
        nets = [whole, stage2, folding.fold_batchnorm(stage2)]
        rates = _fit_rates(nets, params, xt, yt, n_classes, args.turns)
        row["(a) raw fit, whole network"] = rates[0]
        row["(b) raw fit, stage 2, plain"], row["(b) raw fit, stage 2, folded"] = rates[1:]
        release_model(whole)
        del nets, stage2
        trained = {}
        for name, views in (("plain", plain), ("folded", real)):
            folding.training_view, folding.inference_view = views
            seconds, trained[name] = _medtune_epochs((xt, yt, xv, yv), n_classes)
            row[f"(c) medtune stage-2 epoch, {name}"] = len(xt) / seconds
        model = trained["folded"]
        ensemble = build_ensemble([model, *(_lite0(size, n_classes, "stage 2")[0] for _ in range(2))])
        probe = xt[:512]  # inference over whole batches of training images
        for what, net in (("single", model), ("3-member ensemble", ensemble)):
            for _ in range(2):  # in turn, the best of each
                for name, views in (("plain", plain), ("folded", real)):
                    folding.training_view, folding.inference_view = views
                    key = f"(d) inference, {what}, {name}"
                    row[key] = max(row.get(key, 0.0), _infer_rate(net, probe))
        release_model(ensemble)
        del trained, model
        folding.training_view, folding.inference_view = real
        rows.append(row)
        print(table([{k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}], f"{size} px"))
    flat = []
    for row in rows:
        for key, value in row.items():
            if key != "size":
                flat.append({"size": row["size"], "what": key, "images/s": round(value, 1)})
    print(table(flat, f"Lite0 (lite0_whole), batch {BATCH}, {args.images} training images of brain_mri"))
    for row in rows:
        a = row["(a) raw fit, whole network"]
        print(
            f"{row['size']} px: stage-2 epoch folded/plain {row['(c) medtune stage-2 epoch, folded'] / row['(c) medtune stage-2 epoch, plain']:.2f}x; "
            f"per image, (c) folded costs {a / row['(c) medtune stage-2 epoch, folded']:.2f}x (a); "
            f"inference folded/plain {row['(d) inference, single, folded'] / row['(d) inference, single, plain']:.2f}x single, "
            f"{row['(d) inference, 3-member ensemble, folded'] / row['(d) inference, 3-member ensemble, plain']:.2f}x ensemble"
        )


if __name__ == "__main__":
    main()
