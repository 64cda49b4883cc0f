"""Benchmark 3: resident memory after each trial of one search, in one process.

    python bench/memory.py              # 10 trials; target: peak RSS grows < 10 % from trial 2 to 10
    python bench/memory.py --quick      # tiny subset, to check that it runs

Runs ``medtune.steps.search.run_search`` (Optuna engine, median pruning, full MLflow tracking) in a
fresh medtune home, with the step's ``SearchRecorder`` replaced by a subclass that also samples
this process's memory:

* at the end of each trial (``trial_finished``, after its artifacts, before the engine releases
  the model): peak resident memory so far (``ru_maxrss``) and current RSS (``VmRSS``);
* after the engine has released the trial (``progress``, called between trials): current RSS,
  threads and open file descriptors, i.e. what the trial left behind.

By default every trial trains the same configuration (the cnn.yaml defaults as a one-point
space, ``--space fixed``), so any growth is what trials leave behind, not a bigger model drawn
later; ``--space cnn`` (or demo, or a path) measures a real search instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import QUICK_NOTE, add_data_args, machine, memory, set_up, table, verdict

TARGET = 0.10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(p)
    p.add_argument("--trials", type=int, default=10, help="trials in the search (default 10; at least 3)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    p.add_argument("--image-size", type=int, default=64, help="pixels (default 64)")
    p.add_argument(
        "--space",
        default="fixed",
        help="'fixed' (cnn.yaml defaults, the same model every trial), or a space name/path (default fixed)",
    )
    from medtune.hpo.base import PRUNERS  # no TensorFlow yet

    p.add_argument("--pruner", default="median", choices=PRUNERS)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--purge-custom-gradients",
        action="store_true",
        help="demonstrate the proposed fix: after each trial, drop the CustomGradient-* entries TensorFlow "
        "left in its global gradient registry (they pin every trial's train-step graph)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show medtune's per-trial progress lines")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary medtune home (runs, caches)")
    p.add_argument("--quick", action="store_true", help="tiny settings (20 images per class, 32 px, 1 epoch, 6 trials)")
    args = p.parse_args()
    if args.quick:
        args.per_class = args.per_class or 20
        args.epochs, args.image_size, args.trials = 1, 32, 6
    if args.trials < 3:
        p.error("--trials: at least 3 (growth is measured from trial 2)")
    return args


def fixed_space(path: Path) -> Path:
    """cnn.yaml with every unconditional parameter narrowed to its default (one choice)."""
    import yaml

    from medtune.space import load_space, resolve_space_path

    space = load_space(resolve_space_path("cnn"))
    params = {p.name: {"type": "categorical", "choices": [p.default_value()]} for p in space.params if not p.condition}
    path.write_text(yaml.safe_dump({"description": "cnn.yaml defaults, one point (bench/memory.py)", "params": params}))
    return path


def purge_custom_gradients() -> None:
    """Wrap ``medtune.training.release_model`` (the engine looks it up per trial) with the proposed fix.

    Each traced train step registers a ``CustomGradient-<n>`` function (from ``tf.distribute``'s
    ``all_reduce``, used by Keras' optimizer) in TensorFlow's global gradient registry; its closure
    holds graph tensors, so the whole train-step ``FuncGraph`` of every trial stays alive after
    ``keras.backend.clear_session()`` (tensorflow/tensorflow#61791, keras-team/tf-keras#286).
    """
    from tensorflow.python.framework import ops

    from medtune import training

    registry = ops.gradient_registry._registry
    baseline = set(registry)
    release = training.release_model

    def release_and_purge(model=None):
        for key in [k for k in registry if k not in baseline and k.startswith("CustomGradient-")]:
            del registry[key]
        release(model)

    training.release_model = release_and_purge


def main() -> None:
    args = parse_args()
    bench = set_up("memory", args, progress=args.verbose, threads=False)  # the search sets its threads
    folder = bench.data
    space = str(fixed_space(bench.home / "fixed.yaml")) if args.space == "fixed" else args.space

    from medtune.steps import search as search_step

    samples: dict[int, dict] = {}
    between: list[dict] = []

    class SamplingRecorder(search_step.SearchRecorder):
        def trial_finished(self, handle, state, result=None, error=None, **kw):
            super().trial_finished(handle, state, result, error, **kw)
            m = memory()
            samples[handle.number] = {
                "state": state,
                "epochs": result.epochs_run if result is not None else 0,
                "maxrss_mib": m["maxrss_mib"],
                "rss_end_mib": m["rss_mib"],
            }

        def progress(self, summaries):
            super().progress(summaries)
            between.append(memory())  # the first call comes before any trial

    search_step.SearchRecorder = SamplingRecorder  # run_search builds its recorder from this name
    if args.purge_custom_gradients:
        purge_custom_gradients()
    print(machine())
    print(f"data {folder}{f' (first {args.per_class} images per class)' if args.per_class else ''}")
    print(
        f"settings: {args.trials} trials x {args.epochs} epochs at {args.image_size} px, space {args.space}, "
        f"optuna engine, {args.pruner} pruning, full tracking, seed {args.seed}"
        f"{'; with the CustomGradient purge (proposed fix)' if args.purge_custom_gradients else ''}"
    )
    if args.quick:
        print(QUICK_NOTE)
    from medtune.steps.pipeline import ensure_split

    ensure_split(str(folder), args.image_size)
    start = memory()
    t0 = time.perf_counter()
    out = search_step.run_search(
        search_step.SearchOptions(
            dataset=str(folder),
            space=space,
            trials=args.trials,
            epochs=args.epochs,
            image_size=args.image_size,
            seed=args.seed,
            pruner=args.pruner,
        )
    )
    seconds = time.perf_counter() - t0

    after = between[1:]  # one sample after each trial, in trial order
    rows = []
    for i, number in enumerate(sorted(samples)):
        s = samples[number]
        b = after[i] if i < len(after) else {}
        rows.append(
            {
                "trial": number + 1,
                "state": s["state"],
                "epochs": s["epochs"],
                "peak_rss_mib": s["maxrss_mib"],
                "rss_at_end_mib": s["rss_end_mib"],
                "rss_released_mib": b.get("rss_mib", float("nan")),
                "threads": b.get("threads", "-"),
                "open_fds": b.get("fds", "-"),
            }
        )
    print()
    print(
        f"before the search: RSS {start['rss_mib']:.0f} MiB (peak {start['maxrss_mib']:.0f}), "
        f"{start.get('threads', '-')} threads; after loading the split: RSS {between[0]['rss_mib']:.0f} MiB"
    )
    print(table(rows, f"memory per trial ({seconds:.0f} s search; study {out.study})"))
    if len(rows) < 3:
        print("fewer than 3 trials recorded: no growth to report")
        return
    second, last = rows[1], rows[-1]
    growth = last["peak_rss_mib"] / second["peak_rss_mib"] - 1
    rss_growth = last["rss_released_mib"] / second["rss_released_mib"] - 1
    n = len(rows) - 1
    xs = list(range(2, len(rows) + 1))
    ys = [r["rss_released_mib"] for r in rows[1:]]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
    print()
    print(
        f"peak RSS, trial 2 -> {last['trial']}: {second['peak_rss_mib']:.0f} -> {last['peak_rss_mib']:.0f} MiB "
        f"= {growth:+.1%} -> target < {TARGET:.0%} {verdict(growth < TARGET)}"
    )
    print(
        f"RSS after release, trial 2 -> {last['trial']}: {second['rss_released_mib']:.0f} -> "
        f"{last['rss_released_mib']:.0f} MiB = {rss_growth:+.1%}; trend {slope:+.1f} MiB per trial"
    )
    print(f"threads {second['threads']} -> {last['threads']}, open files {second['open_fds']} -> {last['open_fds']}")
    if args.quick:
        print(QUICK_NOTE)


if __name__ == "__main__":
    main()
