"""Benchmark 2: one trial with all of medtune's tracking and artifacts vs a bare ``model.fit``.

    python bench/tracking_overhead.py            # target: tracked <= 1.05x bare
    python bench/tracking_overhead.py --quick    # tiny subset, to check that it runs

Three ways of training the same model (cnn.yaml defaults unless ``--param k=v``), on the same
cached arrays (the split cache of ``--data`` at ``--image-size``), through the same ``tf.data``
pipeline (``medtune.training.make_dataset``), for the same epochs, with the same seed and the
same balanced class weights, in rotating order for ``--repeats`` rounds:

* bare:    ``model.fit(train_ds, validation_data=val_ds, epochs=...)`` with the same training
           recipe (``PreciseBatchNorm``: BatchNorm statistics re-estimated on clean training
           images each epoch, as medtune trains) and nothing else;
* trainer: ``medtune.hpo.trial.train_trial`` without a recorder (its one validation pass per
           epoch gives val loss/accuracy, macro-F1 and balanced accuracy, and the last one the
           final validation probabilities);
* tracked: ``train_trial`` wrapped by ``SearchRecorder`` exactly as the Optuna engine does it:
           a nested child run with its params, per-epoch metrics, learning curves, confusion
           matrix and Grad-CAM grid, run ended and async logging flushed.

Every side includes building the pipeline and the model and releasing it afterwards
(``release_model``). One untimed 1-epoch fit first warms TensorFlow up. The parent search run
is opened once, outside the timings (it is a per-search cost, not a per-trial one).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections import defaultdict

from _common import QUICK_NOTE, add_data_args, machine, set_up, table, verdict

TARGET = 1.05


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(p)
    p.add_argument("--image-size", type=int, default=64, help="pixels (default 64, the search size)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of bare/trainer/tracked, order rotating (default 3)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="override a cnn.yaml default, e.g. --param filters=64 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-home", action="store_true", help="keep the temporary medtune home (runs, caches)")
    p.add_argument("--quick", action="store_true", help="tiny settings (40 images per class, 2 epochs, 1 round)")
    args = p.parse_args()
    if args.quick:
        args.per_class = args.per_class or 40
        args.epochs, args.repeats = 2, 1
    return args


def main() -> None:
    args = parse_args()
    bench = set_up("tracking", args)
    folder, threads = bench.data, bench.threads

    import keras

    from medtune import tracking, training
    from medtune.hpo.base import COMPLETE
    from medtune.hpo.trial import TrialData, probe_indices, train_trial
    from medtune.models import build_model
    from medtune.space import load_space, resolve_space_path
    from medtune.steps.search import SearchOptions
    from medtune.tracking.search_recorder import SearchRecorder
    from medtune.tracking.splits import load_split

    space = load_space(resolve_space_path("cnn"))
    params = (
        space.check_values({**space.defaults(), **dict(kv.split("=", 1) for kv in args.param)}, fill_defaults=True)
        if args.param
        else space.defaults()
    )
    split = load_split(str(folder), args.image_size)
    cache = split.cache
    data = TrialData(
        classes=split.classes,
        x_train=cache.x["train"],
        y_train=cache.y["train"],
        x_val=cache.x["val"],
        y_val=cache.y["val"],
        probe_index=probe_indices(cache.y["val"], len(split.classes), per_class=2, seed=args.seed),
    )
    k, batch = len(data.classes), int(params["batch_size"])

    class TimedRecorder(SearchRecorder):
        """SearchRecorder, unchanged, with the time spent in each of its callbacks added up."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.spent = defaultdict(list)

        def _timed(self, name, fn, *a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.spent[name].append(time.perf_counter() - t0)

        def trial_started(self, number, params):
            return self._timed("trial_started", super().trial_started, number, params)

        def epoch_end(self, handle, epoch, logs):
            return self._timed("epoch_end", super().epoch_end, handle, epoch, logs)

        def trial_finished(self, handle, state, result=None, error=None):
            return self._timed("trial_finished", super().trial_finished, handle, state, result, error)

        def _artifacts(self, logger, result):
            return self._timed("  of which artifacts", super()._artifacts, logger, result)

    import mlflow

    from medtune.tracking import RunLogger

    def timed_attr(owner, attr, label):
        """Count the time spent in ``owner.attr`` (called by trial_finished) under ``label``."""
        original = getattr(owner, attr)

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                if recorder_ref:
                    recorder_ref[0].spent[label].append(time.perf_counter() - t0)

        setattr(owner, attr, wrapper)

    recorder_ref: list = []
    timed_attr(mlflow, "flush_async_logging", "  of which mlflow.flush_async_logging")
    timed_attr(RunLogger, "end", "  of which run end (set_terminated)")

    def bare(epochs: int) -> float:
        t0 = time.perf_counter()
        keras.utils.set_random_seed(args.seed)
        train_ds = training.make_dataset(
            data.x_train, data.y_train, k, batch, training=True, augment=float(params["augment"]), seed=args.seed
        )
        val_ds = training.make_dataset(data.x_val, data.y_val, k, batch, training=False)
        model = training.compile_model(build_model(params, data.input_shape, k), params)
        weights = training.balanced_class_weights(data.y_train, k)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            class_weight=weights,
            verbose=0,
            shuffle=False,
            callbacks=[training.PreciseBatchNorm(data.x_train, seed=args.seed)],
        )
        del model
        training.release_model()
        return time.perf_counter() - t0

    def trainer() -> float:
        t0 = time.perf_counter()
        result = train_trial(params, data, epochs=args.epochs, seed=args.seed)
        result.model = None
        training.release_model()
        return time.perf_counter() - t0

    def validation_pass_seconds() -> float:
        """Median time of ``predict_proba`` over the validation set (after one untimed call)."""
        model = training.compile_model(build_model(params, data.input_shape, k), params)
        training.predict_proba(model, data.x_val)
        spent = []
        for _ in range(3):
            t0 = time.perf_counter()
            training.predict_proba(model, data.x_val)
            spent.append(time.perf_counter() - t0)
        del model
        training.release_model()
        return statistics.median(spent)

    def precise_batchnorm_seconds() -> tuple[float, int]:
        """Median time of one BatchNorm re-estimation (the recipe's per-epoch cost on both sides)
        and the number of training images it runs over."""
        model = training.compile_model(build_model(params, data.input_shape, k), params)
        callback = training.PreciseBatchNorm(data.x_train, seed=args.seed)
        callback.set_model(model)
        callback.on_epoch_end(0)
        spent = []
        for _ in range(3):
            t0 = time.perf_counter()
            callback.on_epoch_end(0)
            spent.append(time.perf_counter() - t0)
        images = len(callback.index)
        del model, callback
        training.release_model()
        return statistics.median(spent), images

    number = iter(range(10_000))
    last_run = {}

    def tracked(recorder) -> float:
        t0 = time.perf_counter()  # the engine's objective() around train_trial, minus Optuna
        handle = recorder.trial_started(next(number), params)
        last_run["id"] = handle.run_id

        def on_epoch(epoch, logs):
            recorder.epoch_end(handle, epoch, dict(logs))
            return False

        result = None
        try:
            result = train_trial(params, data, epochs=args.epochs, seed=args.seed, on_epoch=on_epoch)
            recorder.trial_finished(handle, COMPLETE, result)
        finally:
            if result is not None:
                result.model = None
            training.release_model()
        return time.perf_counter() - t0

    print(machine())
    print(
        f"TensorFlow threads intra={threads[0]} inter={threads[1]}; data {folder}"
        f"{f' (first {args.per_class} images per class)' if args.per_class else ''}"
    )
    print(
        f"settings: {args.image_size} px, {len(data.x_train)} train / {len(data.x_val)} val images, "
        f"{args.epochs} epochs, {args.repeats} round(s), seed {args.seed}"
    )
    print(f"model: {', '.join(f'{k}={v}' for k, v in params.items())}")
    if args.quick:
        print(QUICK_NOTE)

    bare(1)  # warm-up: TensorFlow start-up and first tracing, untimed
    for module in ("medtune.explain", "medtune.reports"):  # the recorder's first-use imports, once per process
        importlib.import_module(module)
    times = defaultdict(list)
    experiment_id = tracking.ensure_experiment(split.dataset)
    opts = SearchOptions(
        dataset=split.dataset, trials=args.repeats, epochs=args.epochs, image_size=args.image_size, seed=args.seed
    )
    with tracking.step_run(
        split.dataset, "search", run_name="bench-tracking-overhead", tags={"medtune.study": "bench-tracking-overhead"}
    ) as parent:
        recorder = TimedRecorder(parent, experiment_id, opts, "bench-tracking-overhead", split.classes)
        recorder_ref.append(recorder)
        sides = {"bare": lambda: bare(args.epochs), "trainer": trainer, "tracked": lambda: tracked(recorder)}
        names = list(sides)
        for r in range(args.repeats):
            for name in names[r % 3 :] + names[: r % 3]:
                times[name].append(sides[name]())
            print(f"  round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.1f} s" for n in names))
        recorder_ref.clear()  # the parent run's own flush at exit is not a trial's

        # what one pass over the validation set costs (trainer extras = epochs + 1 of them)
        val_pass = validation_pass_seconds()
        bn_pass, bn_images = precise_batchnorm_seconds()

    base = statistics.median(times[names[0]])
    described = {
        "bare": "bare model.fit",
        "trainer": "medtune train_trial, no tracking",
        "tracked": "train_trial + SearchRecorder (as the engine)",
    }
    rows = [
        {
            "side": described[n],
            "median_s": statistics.median(v),
            "min_s": min(v),
            "max_s": max(v),
            "runs": len(v),
            "x_bare": statistics.median(v) / base,
        }
        for n, v in times.items()
    ]
    print()
    print(table(rows, f"one trial, {args.epochs} epochs at {args.image_size} px"))
    order = [
        "trial_started",
        "epoch_end",
        "trial_finished",
        "  of which artifacts",
        "  of which mlflow.flush_async_logging",
        "  of which run end (set_terminated)",
    ]
    spent = [
        {"SearchRecorder callback": n, "total_s": sum(v), "per_trial_s": sum(v) / args.repeats, "calls": len(v)}
        for n, v in sorted(recorder.spent.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    ]
    print()
    print(table(spent, "time inside the recorder (all tracked trials)"))
    arts = sorted(a.path for a in parent.client.list_artifacts(last_run["id"])) if last_run else []
    print(f"artifacts of the last tracked trial run: {', '.join(arts) or 'none'}")
    trainer_s = statistics.median(times[names[1]])
    tracked_s = statistics.median(times[names[2]])
    print(
        f"one validation pass (predict_proba on {len(data.x_val)} images): {val_pass:.2f} s "
        f"({val_pass / base:.1%} of bare); the trainer makes one per epoch in place of bare fit's own, and no other"
    )
    print(
        f"one BatchNorm re-estimation (PreciseBatchNorm, {bn_images} training images): "
        f"{bn_pass:.2f} s ({bn_pass * args.epochs / base:.1%} of bare over {args.epochs} epochs), on every side"
    )
    print()
    print(
        f"ratio tracked/bare:    {tracked_s / base:.3f}x -> target <= {TARGET}x {verdict(tracked_s / base <= TARGET)}"
    )
    print(f"ratio tracked/trainer: {tracked_s / trainer_s:.3f}x (tracking alone)")
    print(f"ratio trainer/bare:    {trainer_s / base:.3f}x (validation scoring alone)")
    if args.quick:
        print(QUICK_NOTE)


if __name__ == "__main__":
    main()
