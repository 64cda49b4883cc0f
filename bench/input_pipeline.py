"""Benchmark 5: images per second the cache pipeline delivers vs images per second training consumes.

    python bench/input_pipeline.py                 # 64 and 128 px; target: pipeline >= 10x training
    python bench/input_pipeline.py --quick         # tiny subset, to check that it runs

For each image size the split cache is built once (in a fresh medtune home), then, alternating
for ``--repeats`` rounds:

* pipeline: one full pass over ``medtune.training.make_dataset(x_train, ..., training=True,
  augment=...)`` (shuffle, gather from the memmap, augment, batch, prefetch), nothing consuming
  it but a Python loop;
* training: one epoch of ``model.fit`` of the default CNN (``search_spaces/cnn.yaml`` defaults)
  on the same kind of pipeline, with the balanced class weights the trials use.

The model is traced once before the first timed epoch. A pass of the pipeline without
augmentation is shown as well, to separate the cost of augmenting. Figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import QUICK_NOTE, add_data_args, machine, set_up, table, verdict

TARGET = 10.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(p)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes in pixels (default 64 128)")
    p.add_argument("--repeats", type=int, default=3, help="alternating pipeline/training rounds per size (default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the cnn space default (32)")
    p.add_argument("--augment", type=float, default=None, help="augmentation strength; default: the cnn space default")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-home", action="store_true", help="keep the temporary medtune home (caches) afterwards")
    p.add_argument("--quick", action="store_true", help="tiny settings (40 images per class, 1 round)")
    args = p.parse_args()
    if args.quick:
        args.per_class = args.per_class or 40
        args.repeats = 1
    return args


def pipeline_pass(ds) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    for images, _ in ds:
        n += int(images.shape[0])
    return n, time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    bench = set_up("input-pipeline", args)
    folder, threads = bench.data, bench.threads

    import keras

    from medtune import training
    from medtune.models import build_model
    from medtune.space import load_space, resolve_space_path
    from medtune.tracking.splits import load_split

    params = load_space(resolve_space_path("cnn")).defaults()
    if args.batch_size:
        params["batch_size"] = args.batch_size
    if args.augment is not None:
        params["augment"] = args.augment
    batch, augment = int(params["batch_size"]), float(params["augment"])

    print(machine())
    print(
        f"TensorFlow threads intra={threads[0]} inter={threads[1]}; data {folder}"
        f"{f' (first {args.per_class} images per class)' if args.per_class else ''}"
    )
    print(
        f"settings: sizes {args.sizes}, batch {batch}, augment {augment}, {args.repeats} alternating round(s), "
        f"model: cnn.yaml defaults ({', '.join(f'{k}={v}' for k, v in params.items())})"
    )
    if args.quick:
        print(QUICK_NOTE)

    rows, ratios = [], {}
    for size in args.sizes:
        t0 = time.perf_counter()
        split = load_split(str(folder), size)
        prep = time.perf_counter() - t0
        x, y, k = split.cache.x["train"], split.cache.y["train"], len(split.classes)
        weights = training.balanced_class_weights(y, k)

        def dataset(aug: float, x=x, y=y, k=k):  # this size's arrays, bound now
            return training.make_dataset(x, y, k, batch, training=True, augment=aug, seed=args.seed)

        keras.utils.set_random_seed(args.seed)
        model = training.compile_model(build_model(params, x.shape[1:], k), params)
        model.fit(
            dataset(augment).take(2), epochs=1, verbose=0, class_weight=weights, shuffle=False
        )  # trace once, untimed
        pipe_aug, pipe_plain, train_ds = dataset(augment), dataset(0.0), dataset(augment)
        pipeline_pass(pipe_aug.take(2))  # first-iteration set-up of the pipeline, untimed

        got = {"pipeline (augment)": [], "pipeline (no augment)": [], "training (model.fit)": []}
        for r in range(args.repeats):
            order = ["pipe", "train"] if r % 2 == 0 else ["train", "pipe"]
            for side in order:
                if side == "pipe":
                    n, s = pipeline_pass(pipe_aug)
                    got["pipeline (augment)"].append(n / s)
                    n, s = pipeline_pass(pipe_plain)
                    got["pipeline (no augment)"].append(n / s)
                else:
                    t = time.perf_counter()
                    model.fit(train_ds, epochs=1, verbose=0, class_weight=weights, shuffle=False)
                    got["training (model.fit)"].append(len(x) / (time.perf_counter() - t))
        del model
        training.release_model()
        for side, values in got.items():
            rows.append(
                {
                    "px": size,
                    "side": side,
                    "images_per_s": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "runs": len(values),
                    "train_images": len(x),
                }
            )
        ratios[size] = statistics.median(got["pipeline (augment)"]) / statistics.median(got["training (model.fit)"])
        print(f"  {size} px: split cache ready in {prep:.1f} s ({len(x)} training images)")

    print()
    print(table(rows, "images per second (median of the rounds)"))
    print()
    for size, ratio in ratios.items():
        print(
            f"ratio pipeline/training at {size} px: {ratio:.1f}x -> target >= {TARGET:.0f}x {verdict(ratio >= TARGET)}"
        )
    print(f"target (all sizes): {verdict(all(r >= TARGET for r in ratios.values()))}")
    if args.quick:
        print(QUICK_NOTE)


if __name__ == "__main__":
    main()
