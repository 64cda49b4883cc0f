"""Benchmark: seconds per epoch of every backbone (custom CNN and the backbone table), per stage.

    python bench/backbones.py                 # brain_mri/Training at 64 px (search) and 128 px
    python bench/backbones.py --quick         # tiny subset, to check that it runs

For each image size the split cache is built once (fresh medtune home); then, for each backbone
(``search_spaces/transfer.yaml`` defaults), in the same process. Backbones whose ImageNet weights
ship with a package (EfficientNet-Lite0) start from them, as users run them (their BatchNorm
stays frozen in inference mode); the others from random weights (``weights=none``: they cannot
be downloaded here, and the cost does not depend on the initial values):

* stage 1 (backbone frozen, head only) and stage 2 (top ``fine_tune_layers`` unfrozen): after an
  untimed warm-up of 2 batches, ``--steps`` training batches are timed and the training images per
  second extrapolated to one epoch over the whole training split;
* validation: one timed ``predict`` pass over ``--steps`` batches, extrapolated to the whole
  validation split (each epoch also scores the validation set);
* precise BatchNorm: one timed ``reestimate_batchnorm`` over the 512 training images a trial's
  ``PreciseBatchNorm`` uses after every epoch (in each stage: it re-estimates the BatchNorm layers
  that stage trains, none of a frozen pretrained backbone's);
* seconds per epoch = training images / training rate + validation images / prediction rate
  + the re-estimation.

The custom CNN has one stage. After each backbone the model is released as a search does, and
the memory is recorded: anonymous memory (heap: what a leak grows) and resident memory (which
also counts the pages of the memory-mapped cache read so far). ``--cycles`` runs every backbone
several times at the first size; growth is measured from the second cycle (the first one loads
libraries and traces) to the last, to show memory stays flat when trials switch backbones.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import QUICK_NOTE, add_data_args, machine, memory, set_up, table
from medtune.models import BACKBONES  # the backbone table; no TensorFlow yet


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(p)
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[64, 128],
        help="image sizes (default 64, the search size, and 128); a backbone needing more is skipped",
    )
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--steps", type=int, default=12, help="timed batches per stage (default 12)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--cycles",
        type=int,
        default=4,
        help="passes over the backbones at the first size (default 4; growth is cycle 2 -> last)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-home", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny settings (20 images per class, 80 px, 2 steps)")
    args = p.parse_args()
    if args.quick:
        args.per_class = args.per_class or 20
        args.sizes, args.steps, args.cycles = [80], 2, 1
    return args


def timed_fit(model, ds, steps: int, batch: int, class_weight) -> float:
    """Training images per second over ``steps`` batches (after 2 untimed warm-up batches)."""
    model.fit(ds.take(2), epochs=1, verbose=0, class_weight=class_weight)
    t = time.perf_counter()
    model.fit(ds.take(steps), epochs=1, verbose=0, class_weight=class_weight)
    return steps * batch / (time.perf_counter() - t)


def timed_predict(model, x, steps: int, batch: int) -> float:
    n = min(len(x), steps * batch)
    model.predict(x[:batch], batch_size=batch, verbose=0)
    t = time.perf_counter()
    model.predict(x[:n], batch_size=batch, verbose=0)
    return n / (time.perf_counter() - t)


def timed_precise_bn(model, sample, batch: int) -> float:
    """Seconds of one re-estimation, as ``PreciseBatchNorm`` runs it after every epoch."""
    from medtune import training

    t = time.perf_counter()
    training.reestimate_batchnorm(model, sample, batch_size=batch)
    return time.perf_counter() - t


def main() -> None:
    args = parse_args()
    bench = set_up("backbones", args)
    folder, threads = bench.data, bench.threads

    import keras

    from medtune import training
    from medtune.models import build_model
    from medtune.models.transfer import BACKBONE_SPECS, set_stage, stage_plan
    from medtune.models.weights import resolve_weights
    from medtune.space import load_space, resolve_space_path
    from medtune.tracking.splits import load_split

    space = load_space(resolve_space_path("transfer"))
    print(machine())
    print(
        f"TensorFlow threads intra={threads[0]} inter={threads[1]}; data {folder}"
        f"{f' (first {args.per_class} images per class)' if args.per_class else ''}"
    )
    print(
        f"settings: sizes {args.sizes}, batch {args.batch_size}, {args.steps} timed batches per stage, "
        f"transfer.yaml defaults; ImageNet weights for "
        f"{', '.join(n for n in args.backbones if n in BACKBONE_SPECS and BACKBONE_SPECS[n].imagenet_package) or 'none'}, "
        f"random for the others"
    )
    if args.quick:
        print(QUICK_NOTE)

    rows, mem_rows = [], []
    rounds = [(args.sizes[0], c) for c in range(args.cycles)] + [(s, 0) for s in args.sizes[1:]]
    caches = {}
    for size, cycle in rounds:
        if size not in caches:
            caches[size] = load_split(str(folder), size)
        split = caches[size]
        x, y = split.cache.x["train"], split.cache.y["train"]
        xv = split.cache.x["val"]
        precise = training.PreciseBatchNorm(x, seed=args.seed)  # its sample, read once as the callback does
        bn_sample = np.asarray(x[precise.index])
        k = len(split.classes)
        class_weight = training.balanced_class_weights(y, k)
        for name in args.backbones:
            if name != "custom" and size < BACKBONE_SPECS[name].min_size:
                if cycle == 0:
                    rows.append(
                        {
                            "px": size,
                            "backbone": name,
                            "stage": "-",
                            "trainable_layers": "-",
                            "params_M": "-",
                            "train_img_s": "-",
                            "val_img_s": "-",
                            "precise_bn_s": "-",
                            "s_per_epoch": f"needs >= {BACKBONE_SPECS[name].min_size} px",
                            "build_s": "-",
                        }
                    )
                continue
            values = {}
            for p in space:
                if space.is_active(p.name, {**values, "backbone": name}):
                    values[p.name] = name if p.name == "backbone" else p.default_value()
            values.update(batch_size=args.batch_size, augment=0.2, head_epochs=1)
            keras.utils.set_random_seed(args.seed)
            t_build = time.perf_counter()
            packaged = name in BACKBONE_SPECS and BACKBONE_SPECS[name].imagenet_package
            weights = resolve_weights("imagenet", [name]) if packaged else {}
            model = training.compile_model(build_model(values, x.shape[1:], k, weights=weights), values)
            build_s = time.perf_counter() - t_build
            ds = training.make_dataset(x, y, k, args.batch_size, training=True, augment=0.2, seed=args.seed).repeat()
            rates = {}
            for stage in stage_plan(values, 2):
                layers = set_stage(model, stage)
                if stage.number > 1:
                    training.compile_model(model, {**values, "learning_rate": stage.learning_rate})
                rate = timed_fit(model, ds, args.steps, args.batch_size, class_weight)
                rates[stage.number] = (rate, layers, timed_precise_bn(model, bn_sample, precise.batch_size))
            pred = timed_predict(model, xv, args.steps, args.batch_size)
            params_m = model.count_params() / 1e6
            del model, ds
            training.release_model()
            if cycle == 0:
                for number, (rate, layers, bn_s) in rates.items():
                    rows.append(
                        {
                            "px": size,
                            "backbone": name,
                            "stage": number,
                            "trainable_layers": layers,
                            "params_M": params_m,
                            "train_img_s": rate,
                            "val_img_s": pred,
                            "precise_bn_s": bn_s,
                            "s_per_epoch": len(x) / rate + len(xv) / pred + bn_s,
                            "build_s": build_s,
                        }
                    )
            mem = memory()
            mem_rows.append(
                {
                    "px": size,
                    "cycle": cycle + 1,
                    "after": name,
                    "rss_mib": mem.get("rss_mib", float("nan")),
                    "anon_mib": mem.get("anon_mib", float("nan")),
                    "peak_mib": mem["maxrss_mib"],
                }
            )
            print(
                f"  {size} px {name} (cycle {cycle + 1}): "
                + ", ".join(
                    f"stage {n} {r:.0f} img/s ({len(x) / r + len(xv) / pred + bn:.0f} s/epoch)"
                    for n, (r, _, bn) in rates.items()
                )
                + f"; RSS {mem.get('rss_mib', float('nan')):.0f} MiB",
                flush=True,
            )

    print()
    print(table(rows, f"seconds per epoch on {len(x)} training + {len(xv)} validation images (extrapolated)"))
    print()
    print(table(mem_rows, "resident memory after each backbone (model released)"))
    if args.cycles > 1:
        for key, what in (("anon_mib", "anonymous (heap)"), ("rss_mib", "resident, incl. cache pages read")):
            first = [r[key] for r in mem_rows if r["cycle"] == 2 and r["px"] == args.sizes[0]]
            last = [r[key] for r in mem_rows if r["cycle"] == args.cycles and r["px"] == args.sizes[0]]
            growth = (last[-1] - first[-1]) / first[-1] * 100
            print(
                f"{what} memory after the last backbone: cycle 2 {first[-1]:.0f} MiB, cycle {args.cycles} "
                f"{last[-1]:.0f} MiB ({growth:+.1f} %) when trials switch backbones"
            )
    if args.quick:
        print(QUICK_NOTE)


if __name__ == "__main__":
    main()
