"""Every option of medtune's steps, declared once: its default, its kind, its help.

The click options of ``medtune`` (:mod:`medtune.cli`) are built from these declarations, and the
steps' option dataclasses (``SplitOptions``, ``SearchOptions``, ``TrainOptions``,
``PipelineOptions``, which the Python API fills) take their defaults from :func:`default`.
MLproject's parameters are checked against them (tests/test_defaults_agree.py).

A default of None means *auto* when ``auto`` says what decides (the plan, usually), else *none*.
An option whose meaning differs between steps is declared per step: ``search.epochs`` (per
trial) and ``train.epochs`` (final training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AUTO", "OPTIONS", "Option", "default"]

AUTO = "auto"  # on the command line and in MLproject: left to the plan


@dataclass(frozen=True)
class Option:
    default: Any = None
    kind: str = "str"  # str | int | float | bool | duration | sizes | classes | engine | choice
    help: str = ""
    auto: str = ""  # a None default that something decides: what decides it
    choices: tuple[str, ...] = ()
    envvar: str | None = None
    shown: Any = None  # the command line's default when it is not the value (e.g. "latest" for None)


_SIZED = "the plan's, from the machine and, with a budget, the data"

OPTIONS: dict[str, Option] = {
    # data
    "dataset": Option(
        "synthetic",
        help="A registered name (brain_mri, dermnet, covid19_radiography, synthetic) or a folder of class sub-folders.",
    ),
    "data_dir": Option(help="Where the named dataset lives (else $MEDTUNE_DATA_DIR/<name>, then ./data/<name>)."),
    "exclude_classes": Option(
        (), "classes", "Class folders to leave out, comma-separated (e.g. a class that label conflicts leave empty)."
    ),
    "labels": Option(
        help="A CSV table naming the images instead of class folders: columns path,label and optionally "
        "patient,split (train/val/test); paths relative to the dataset folder, where a relative table path is "
        "looked up first, then here."
    ),
    "seed": Option(42, "int", "Random seed."),
    # split
    "split.image_size": Option(128, "int", "Side of the cached square images."),
    "val_fraction": Option(0.15, "float", "Share of the images kept for validation."),
    "test_fraction": Option(0.15, "float", "Ignored when the dataset ships an official test folder."),
    "phash_distance": Option(
        4, "int", "Near-duplicate candidates: perceptual-hash bits, then confirmed on pixels (0 = exact only)."
    ),
    "window": Option(
        help="DICOM grey window center,width for every file, e.g. 40,400 (default: each file's own VOI LUT or "
        "window, else its min/max). Part of the model: serving decodes DICOM with it too."
    ),
    # search
    "engine": Option(
        "optuna",
        "engine",
        "optuna (TPE), bayesian or keras_hyperband (keras-tuner); hyperband is an old name for keras_hyperband.",
    ),
    "space": Option(
        help="Space file or name in search_spaces/ (default: the plan's: demo for synthetic, cnn_cpu on CPU, "
        "cnn on a GPU, auto_cpu/auto_gpu with a budget)."
    ),
    "trials": Option(None, "int", "Trials to complete (resumed searches count earlier ones)", _SIZED),
    "search.epochs": Option(None, "int", "Maximum epochs per trial", _SIZED),
    "search.image_size": Option(None, "int", "Search image size (smaller than final training's)", _SIZED),
    "image_sizes": Option(
        None,
        "sizes",
        "Resolution rungs, e.g. 64,96,128: trials start small and promising ones continue larger "
        "from their own weights (overrides --image-size).",
    ),
    "objective": Option("val_macro_f1", "choice", "What the search maximises (or minimises: val_loss)."),
    "pruner": Option(None, "choice", "Optuna pruner, per epoch", _SIZED),
    "plateau": Option(0, "int", "Stop after this many finished trials without improvement (0: never)."),
    "class_weights": Option(
        None, "bool", "Weight classes by inverse frequency (balanced): true or false", "on, the plan's rule 7"
    ),
    "timeout": Option(None, "float", "The search's time limit in seconds (budget's old name; 0: none).", shown=0),
    "study": Option(
        help="Study name; the same name resumes (default: derived from dataset, space, engine, size, split)."
    ),
    "storage": Option(
        envvar="MEDTUNE_OPTUNA_STORAGE",
        help="Optuna storage URL, e.g. postgresql://user@host/db (default: sqlite:///optuna.db).",
    ),
    "warm_start": Option(
        "recipes",
        help="Seed a new Optuna study: recipes (documented known-good configurations), recipe:<name> (that one "
        "only), auto (recipes and the finished trials of earlier studies on the same split), none, or study "
        "names to import.",
    ),
    "split_run": Option(None, help="Split run id to train on.", shown="latest"),
    "search.weights": Option(
        "imagenet",
        help="Backbone initial weights: imagenet, none, a .h5/.weights.h5 file or a folder of Keras's files.",
    ),
    "budget": Option(
        None,
        "duration",
        "Time budget: minutes (90) or 90m, 2h, 1h30m (default: none). No trial starts after it is spent; "
        "a running trial stops at its next epoch boundary.",
    ),
    # final training
    "search_run": Option("latest", help="Search run whose best trial to train."),
    "params": Option(help="YAML/JSON file of explicit params (instead of a search)."),
    "train.epochs": Option(None, "int", "Final-training epochs (early stopping ends sooner)", _SIZED),
    "train.image_size": Option(None, "int", "Final-training image size", _SIZED),
    "ensemble": Option(None, "int", "Members (seeds of the configuration) averaged in one model", "the plan's, 1"),
    "folds": Option(
        None,
        "int",
        "k-fold cross-validation of final training: one member per fold, calibrated out of fold (0: the "
        "validation split)",
        "the plan's: 5 for small datasets, else 0",
    ),
    "patience": Option(
        None, "int", "Final-training early-stopping patience in epochs", "8, or half the epochs under a cosine schedule"
    ),
    "mixed_precision": Option(True, "bool", "Mixed precision on GPU (ignored on CPU)."),
    "margin": Option(0.0, "float", "An extra macro-F1 a new model must beat the champion by (beyond noise)."),
    "train.weights": Option(
        None,
        help="Backbone initial weights: imagenet, none, a .h5/.weights.h5 file or a folder of Keras's files "
        "(default: what the search used).",
    ),
    "tta": Option(
        "auto",
        "choice",
        "Test-time left-right flip averaged in the final model (auto: when it scores better on validation).",
        choices=("auto", "flip", "none"),
    ),
    "calibrate": Option(
        True, "bool", "Fit a temperature on validation images so the served probabilities are calibrated."
    ),
    "conformal_level": Option(
        0.9, "float", "Coverage of the prediction set served with each answer (split-conformal)."
    ),
    "card_images": Option(False, "bool", "Grad-CAM over real test images (patient data) in the model card's HTML."),
    # the other commands
    "new_run": Option(False, "flag", "Log a new run even when a finished split of the same files and split exists."),
    "model_uri": Option(help="e.g. models:/medtune-brain_mri@champion or runs:/<id>/model"),
    "evaluate.dataset": Option(help="Dataset whose test split to use (default: the model's)."),
    "output": Option("predictions.csv", help="CSV of the predictions."),
    "gradcam": Option(help="Folder for heatmap overlays."),
    "app.model": Option(
        help="Preselected model, e.g. models:/medtune-brain_mri@champion (default: the first medtune-* model's "
        "@champion)."
    ),
    "host": Option(
        "127.0.0.1",
        help="Address to bind; 0.0.0.0 opens the demo to the network (then --auth or --no-auth is required).",
    ),
    "port": Option(7860, "int", "Port to serve on."),
    "max_file_size": Option("20mb", help="Largest upload accepted, e.g. 5mb, 1gb."),
    "auth": Option(
        envvar="MEDTUNE_APP_AUTH",
        help="user:password of the page's login (or $MEDTUNE_APP_AUTH, which `ps` does not show).",
    ),
    "no_auth": Option(False, "flag", "Serve beyond loopback with no login, on purpose."),
    "tracking_uri": Option(
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: sqlite:///mlflow.db in the project directory).",
    ),
}


def default(name: str) -> Any:
    """The declared default of option ``name`` (e.g. ``seed``, ``train.epochs``)."""
    return OPTIONS[name].default
