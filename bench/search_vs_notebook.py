"""Benchmark 1: medtune's Optuna search vs a notebook-style keras-tuner search, same budget.

    python bench/search_vs_notebook.py            # 8 trials x 4 epochs at 64 px on brain_mri/Training
    python bench/search_vs_notebook.py --quick    # tiny subset, to check that it runs

Both sides search the same space (``--space``, default search_spaces/cnn.yaml, declared on the
keras-tuner side through medtune's own space adapter, so names and ranges are identical), with
the same trial budget, epochs, image size and seed, build the same model family
(``medtune.models.build_model`` + ``medtune.training.compile_model`` with the trial's values),
augment with the same function (``medtune.training.augment_batch``) at the trial's strength and
score the same objective (validation macro-F1, ``medtune.training.validation_scores``).

* medtune: ``split`` (scan, de-duplicate, split, decode once into the array cache; timed and
  counted), then ``medtune.steps.search.run_search`` with the Optuna engine, median pruning and
  full MLflow tracking (child run per trial, per-epoch metrics, learning curves, confusion matrix,
  Grad-CAM, search summary and plots), in a fresh medtune home. Its trials re-estimate BatchNorm
  statistics on un-augmented training images before each validation pass
  (``medtune.training.PreciseBatchNorm``), as medtune always does.
* notebook: ``kt.BayesianOptimization`` (keras-tuner defaults) over a ``kt.HyperModel`` whose
  ``fit`` calls ``keras.utils.image_dataset_from_directory(folder, validation_split=...,
  subset=..., seed=..., image_size=...)`` for training and validation in every trial (re-reading
  and re-decoding every JPEG), ``.cache()`` after decoding as the TensorFlow tutorial does
  (``--no-notebook-cache``: decode every epoch), trains every trial for all its epochs, and
  scores val macro-F1 with a callback over the validation set; BatchNorm keeps Keras's moving
  averages of the training batches, as in a notebook.

The budget is run in ``--rounds`` alternating chunks (round 1: medtune then notebook, round 2:
notebook then medtune, ...): both searches are resumed in the same process, as each engine
supports, so machine-load changes hit both sides alike. (Optuna's TPE start-up count depends on
the budget passed: with more than 11 trials, chunking changes it; use ``--rounds 1`` there.)

Both sides train on the same share of the files: by default the notebook's ``validation_split`` is
everything medtune does not train on (its validation and test shares, 1 - 0.85 x 0.85 = 0.28), as
a notebook would hold out the same amount to compare fairly (``--notebook-validation-split 0.15``
gives the notebook about 26 % more training images than medtune). The validation sets still differ: medtune's is its
own de-duplicated split (no image shared with training), the notebook's is a random share of the
raw files (duplicates can straddle training and validation), so the two best F1 values are each
side's own estimate, not the same measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time

import numpy as np

from _common import QUICK_NOTE, add_data_args, machine, set_up, table, verdict

TARGET = 3.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(p)
    p.add_argument("--trials", type=int, default=8, help="trial budget of each search (default 8)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial (default 4)")
    p.add_argument("--image-size", type=int, default=64, help="pixels (default 64)")
    p.add_argument("--space", default="cnn", help="search space name or path, used by both sides (default cnn)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rounds", type=int, default=2, help="alternating chunks the budget is run in (default 2)")
    from medtune.hpo.base import PRUNERS

    p.add_argument("--pruner", default="median", choices=PRUNERS, help="medtune's Optuna pruner (default median)")
    p.add_argument(
        "--notebook-validation-split",
        type=float,
        default=None,
        help="validation_split of image_dataset_from_directory (default: the share medtune does not "
        "train on, so that both sides train on as many files)",
    )
    p.add_argument(
        "--no-notebook-cache",
        dest="notebook_cache",
        action="store_false",
        help="notebook side: no .cache(), i.e. decode the JPEGs every epoch, not once per trial",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show medtune's per-trial progress lines")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary medtune home (runs, caches, tuner)")
    p.add_argument(
        "--quick", action="store_true", help="tiny settings (40 images per class, 3 trials x 2 epochs, the demo space)"
    )
    args = p.parse_args()
    if args.quick:
        args.per_class = args.per_class or 40
        args.trials, args.epochs = 3, 2
        if args.space == "cnn":
            args.space = "demo"
    args.rounds = max(1, min(args.rounds, args.trials))
    if args.notebook_validation_split is None:
        from medtune.steps.split import SplitOptions

        medtune_train_share = (1 - SplitOptions.val_fraction) * (1 - SplitOptions.test_fraction)
        args.notebook_validation_split = round(1 - medtune_train_share, 2)
    return args


def main() -> None:
    args = parse_args()
    bench = set_up("search-vs-notebook", args, progress=args.verbose)
    folder, threads = bench.data, bench.threads

    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from medtune import training
    from medtune.hpo.base import COMPLETE, PRUNED
    from medtune.hpo.keras_tuner_engine import active_values, declare
    from medtune.models import build_model
    from medtune.space import load_space, resolve_space_path
    from medtune.steps.search import SearchOptions, run_search
    from medtune.steps.split import SplitOptions, run_split

    space_path = resolve_space_path(args.space)
    space = load_space(space_path)
    size, epochs = args.image_size, args.epochs
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    k = len(classes)
    budget = [round(args.trials * (r + 1) / args.rounds) for r in range(args.rounds)]

    # ------------------------------------------------------------ the notebook way
    notebook_log = {"epoch_s": [], "first_epoch_s": [], "load_s": [], "train_images": 0, "val_images": 0}

    class ValMacroF1(keras.callbacks.Callback):
        """val_macro_f1 / val_balanced_accuracy over the validation set, added to the epoch's logs."""

        def __init__(self, val_ds):
            super().__init__()
            self.val_ds = val_ds
            self.t0 = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            ys, probs = [], []
            for images, onehot in self.val_ds:
                probs.append(self.model.predict_on_batch(images))
                ys.append(np.argmax(onehot.numpy(), axis=-1))
            logs.update(training.validation_scores(np.concatenate(ys), np.concatenate(probs)))
            (notebook_log["first_epoch_s"] if epoch == 0 else notebook_log["epoch_s"]).append(
                time.perf_counter() - self.t0
            )

    class NotebookHyperModel(kt.HyperModel):
        def build(self, hp):
            params = declare(hp, space)  # the same space file, declared as keras-tuner hyperparameters
            return training.compile_model(build_model(params, (size, size, 3), k), params)

        def fit(self, hp, model, *args_, **kwargs):
            params = active_values(space, hp.values)
            batch = int(params.get("batch_size", 32))
            t0 = time.perf_counter()
            common = dict(
                validation_split=args.notebook_validation_split,
                seed=args.seed,
                image_size=(size, size),
                batch_size=batch,
                label_mode="categorical",
                class_names=classes,
                verbose=False,
            )
            with contextlib.redirect_stdout(io.StringIO()):  # "Using N files for training."
                train = keras.utils.image_dataset_from_directory(folder, subset="training", **common)
                val = keras.utils.image_dataset_from_directory(folder, subset="validation", **common)
            notebook_log["load_s"].append(time.perf_counter() - t0)
            notebook_log["train_images"] = len(train.file_paths)
            notebook_log["val_images"] = len(val.file_paths)
            if args.notebook_cache:
                train, val = train.cache(), val.cache()
            strength = float(params.get("augment", 0.0))
            if strength > 0:
                seeds = tf.data.Dataset.random(seed=args.seed, rerandomize_each_iteration=True).batch(2)
                train = tf.data.Dataset.zip((train, seeds)).map(
                    lambda b, s: (training.augment_batch(b[0], s, strength), b[1]), num_parallel_calls=tf.data.AUTOTUNE
                )
            train, val = train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)
            kwargs.pop("verbose", None)
            callbacks = [ValMacroF1(val), *kwargs.pop("callbacks", [])]
            return model.fit(train, validation_data=val, epochs=epochs, callbacks=callbacks, verbose=0, **kwargs)

    tuner = None

    def notebook_round(target: int) -> None:
        nonlocal tuner
        if tuner is None:
            keras.utils.set_random_seed(args.seed)
            tuner = kt.BayesianOptimization(
                NotebookHyperModel(),
                objective=kt.Objective("val_macro_f1", direction="max"),
                max_trials=target,
                seed=args.seed,
                directory=str(bench.home / "keras_tuner"),
                project_name="notebook",
                overwrite=True,
            )
        tuner.oracle.max_trials = target  # resume the same search with a larger budget
        tuner.search(verbose=0)

    # ------------------------------------------------------------ medtune
    medtune_state: dict = {}

    def medtune_round(target: int) -> None:
        if "split_s" not in medtune_state:
            t0 = time.perf_counter()
            out = run_split(SplitOptions(dataset=str(folder), image_size=size, seed=args.seed), reuse_run=True)
            medtune_state["split_s"] = time.perf_counter() - t0
            medtune_state["train_images"] = len(out.cache.x["train"])
            medtune_state["val_images"] = len(out.cache.x["val"])
            medtune_state["kept"] = out.result.report["accounted"]["kept"]
        medtune_state["outcome"] = run_search(
            SearchOptions(
                dataset=str(folder),
                space=str(space_path),
                trials=target,
                epochs=epochs,
                image_size=size,
                seed=args.seed,
                pruner=args.pruner,
                study="bench-medtune",
            )
        )

    print(machine())
    print(
        f"TensorFlow threads intra={threads[0]} inter={threads[1]}; data {folder}"
        f"{f' (first {args.per_class} images per class)' if args.per_class else ''}"
    )
    print(
        f"settings: space {space_path.name}, {args.trials} trials x {epochs} epochs at {size} px, seed {args.seed}, "
        f"medtune pruner {args.pruner}, "
        f"{args.rounds} alternating round(s) (cumulative budgets {budget}); notebook validation_split "
        f"{args.notebook_validation_split:.2f}, {'cache() after decoding' if args.notebook_cache else 'no cache()'}"
    )
    if args.quick:
        print(QUICK_NOTE)

    spent = {"medtune": 0.0, "notebook": 0.0}
    for r, target in enumerate(budget):
        order = ["medtune", "notebook"] if r % 2 == 0 else ["notebook", "medtune"]
        for side in order:
            t0 = time.perf_counter()
            (medtune_round if side == "medtune" else notebook_round)(target)
            spent[side] += time.perf_counter() - t0
        print(
            f"  round {r + 1}: {target} trials each; cumulative medtune {spent['medtune']:.0f} s, "
            f"notebook {spent['notebook']:.0f} s"
        )

    # ------------------------------------------------------------ report
    outcome = medtune_state["outcome"]
    sums = outcome.summaries
    m_trials = sum(s.state in (COMPLETE, PRUNED) for s in sums)
    m_pruned = sum(s.state == PRUNED for s in sums)
    m_epochs = sum((s.epochs_run or 0) for s in sums if s.state in (COMPLETE, PRUNED))
    m_best = outcome.best.value if outcome.best else float("nan")
    split_s = medtune_state["split_s"]
    m_search_s = spent["medtune"] - split_s

    n_trials_done = [t for t in tuner.oracle.trials.values() if str(t.status) == "COMPLETED"]
    n_trials = len(n_trials_done)
    n_best_trial = tuner.oracle.get_best_trials(1)
    n_best = n_best_trial[0].score if n_best_trial else float("nan")
    n_s = spent["notebook"]
    n_epochs = n_trials * epochs

    def per_hour(trials, seconds):
        return trials / seconds * 3600 if seconds > 0 else float("nan")

    rows = [
        {
            "side": "medtune (split + search)",
            "trials": m_trials,
            "pruned": m_pruned,
            "epochs_run": m_epochs,
            "seconds": spent["medtune"],
            "trials_per_h": per_hour(m_trials, spent["medtune"]),
            "best_val_macro_f1": m_best,
            "train_imgs": medtune_state["train_images"],
            "val_imgs": medtune_state["val_images"],
        },
        {
            "side": "medtune (search only)",
            "trials": m_trials,
            "pruned": m_pruned,
            "epochs_run": m_epochs,
            "seconds": m_search_s,
            "trials_per_h": per_hour(m_trials, m_search_s),
            "best_val_macro_f1": m_best,
            "train_imgs": medtune_state["train_images"],
            "val_imgs": medtune_state["val_images"],
        },
        {
            "side": "notebook keras-tuner",
            "trials": n_trials,
            "pruned": 0,
            "epochs_run": n_epochs,
            "seconds": n_s,
            "trials_per_h": per_hour(n_trials, n_s),
            "best_val_macro_f1": n_best,
            "train_imgs": notebook_log["train_images"],
            "val_imgs": notebook_log["val_images"],
        },
    ]
    print()
    print(table(rows, f"search on {folder} ({space_path.name}, {args.trials} trials x {epochs} epochs, {size} px)"))
    durations = [s.duration_s for s in sums if s.duration_s and s.state in (COMPLETE, PRUNED)]
    m_first, m_later = [], []  # epoch_seconds as medtune logged them in each trial run
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for s in sums:
        if s.run_id:
            history = sorted(client.get_metric_history(s.run_id, "epoch_seconds"), key=lambda m: m.step)
            m_first += [m.value for m in history[:1]]
            m_later += [m.value for m in history[1:]]

    def mean(values):
        return f"{np.mean(values):.1f} s" if values else "-"

    print()
    print(
        f"medtune: split (scan, de-duplicate, decode once) {split_s:.1f} s, {medtune_state['kept']} images kept; "
        f"first epoch (tracing) {mean(m_first)}, later epochs {mean(m_later)}; mean trial {mean(durations)} "
        f"(with tracking); pruning saved {args.trials * epochs - m_epochs} of {args.trials * epochs} epochs"
    )
    print(
        f"notebook: image_dataset_from_directory x2 per trial {mean(notebook_log['load_s'])} (file listing); "
        f"first epoch (decoding{' + caching' if args.notebook_cache else ''} + tracing) "
        f"{mean(notebook_log['first_epoch_s'])}, later epochs {mean(notebook_log['epoch_s'])}; "
        f"mean trial {n_s / max(n_trials, 1):.1f} s"
    )
    print(
        "note: medtune's validation split is its own de-duplicated split; the notebook's is a random "
        f"{args.notebook_validation_split:.0%} of the raw files (duplicates may straddle it): the F1 values are "
        "each side's own estimate."
    )
    ratio = rows[0]["trials_per_h"] / rows[2]["trials_per_h"]
    ratio_search = rows[1]["trials_per_h"] / rows[2]["trials_per_h"]
    per_image = ratio * medtune_state["train_images"] / max(notebook_log["train_images"], 1)
    print()
    print(
        f"ratio trials/h medtune/notebook (split counted): {ratio:.2f}x -> target >= {TARGET:.0f}x "
        f"{verdict(ratio >= TARGET)}"
    )
    print(
        f"ratio trials/h, search only: {ratio_search:.2f}x; per training image (trials x train images per hour): "
        f"{per_image:.2f}x"
    )
    f1_ok = math.isfinite(m_best) and (not math.isfinite(n_best) or m_best >= n_best)
    print(f"best val macro-F1 medtune {m_best:.4f} vs notebook {n_best:.4f} -> target no worse {verdict(f1_ok)}")
    if args.quick:
        print(QUICK_NOTE)


if __name__ == "__main__":
    main()
