"""The ``medtune`` command line: a thin click group, one function per step.

Heavy imports (TensorFlow, MLflow) happen inside the commands, so ``medtune --help`` is instant.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from medtune import __version__
from medtune.errors import MedtuneError
from medtune.hpo.base import PRUNERS
from medtune.hpo.engines import ENGINE_ALIASES, ENGINES
from medtune.hpo.trial import OBJECTIVES

log = logging.getLogger("medtune")
AUTO = "auto"  # an option left to the plan (medtune.planning.rules)


class _Auto(click.ParamType):
    """A value, or ``auto`` (the default): sized from the machine and dataset (see medtune.planning.rules)."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, inner.name

    def convert(self, value, param, ctx):
        if value is None or str(value).strip().lower() in ("", AUTO):
            return None
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param, ctx=None):  # noqa: ARG002
        choices = getattr(self.inner, "choices", None)
        return f"[{'|'.join((*choices, AUTO))}]" if choices else f"{self.name.upper()}|{AUTO}"


def _auto(flag: str, kind, help_text: str, auto: str = "sized from the machine, GPU or CPU"):
    """An option whose default is ``auto`` (sized from the machine, see medtune.planning.rules)."""
    return click.option(flag, default=AUTO, show_default=True, type=_Auto(kind), help=f"{help_text} (auto: {auto})")


PATIENCE = _auto(
    "--patience",
    click.INT,
    "Final-training early-stopping patience in epochs",
    "8, or half the epochs under a cosine schedule",
)


ENGINE = click.option(
    "--engine",
    default="optuna",
    show_default=True,
    type=click.Choice([*ENGINES, *ENGINE_ALIASES]),
    callback=lambda ctx, p, v: ENGINE_ALIASES.get(v, v),
    help="optuna (TPE), bayesian or keras_hyperband (keras-tuner); hyperband is an old name for keras_hyperband.",
)
OBJECTIVE = click.option("--objective", default="val_macro_f1", show_default=True, type=click.Choice(list(OBJECTIVES)))
PRUNER = _auto("--pruner", click.Choice(PRUNERS), "Optuna pruner, per epoch")
CLASS_WEIGHTS = _auto(
    "--class-weights",
    click.BOOL,
    "Weight classes by inverse frequency (balanced): true or false",
    "on, the plan's rule 7",
)
TIMEOUT = click.option(
    "--timeout",
    default=0.0,
    show_default=True,
    type=float,
    help="The search's time limit in seconds (budget's old name).",
)
STUDY = click.option(
    "--study",
    default="",
    callback=lambda ctx, p, v: _none_if_empty(ctx, p, v),
    help="Study name; the same name resumes (default: derived from dataset, space, engine, size, split).",
)
STORAGE = click.option(
    "--storage",
    default="",
    callback=lambda ctx, p, v: _none_if_empty(ctx, p, v),
    envvar="MEDTUNE_OPTUNA_STORAGE",
    help="Optuna storage URL, e.g. postgresql://user@host/db (default: sqlite:///optuna.db).",
)
SPACE = click.option(
    "--space",
    default="",
    callback=lambda ctx, p, v: _none_if_empty(ctx, p, v),
    help="Space file or name in search_spaces/ (default: demo for synthetic, else cnn_cpu on CPU, cnn on a GPU).",
)


class _Duration(click.ParamType):
    """A time budget: minutes (90) or 90m, 2h, 1h30m, 45s; empty or 0 for none. Converts to seconds."""

    name = "duration"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        from medtune.errors import ConfigError
        from medtune.planning.budget import parse_budget

        try:
            return parse_budget(value)
        except ConfigError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


class _Sizes(click.ParamType):
    """Comma-separated image sizes (resolution rungs), e.g. 64,96,128; empty for one size."""

    name = "sizes"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        text = str(value).strip()
        if text in ("", AUTO, "none"):
            return None
        try:
            return tuple(int(v) for v in text.split(","))
        except ValueError:
            self.fail(f"{text!r} is not a comma-separated list of sizes such as 64,96,128", param, ctx)


TTA = click.option(
    "--tta",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "flip", "none"]),
    help="Test-time left-right flip averaged in the final model (auto: when it scores better on validation).",
)
TRUST_OPTIONS = [
    click.option(
        "--calibrate",
        default=True,
        show_default=True,
        type=click.BOOL,
        help="Fit a temperature on validation images so the served probabilities are calibrated.",
    ),
    click.option(
        "--conformal-level",
        default=0.9,
        show_default=True,
        type=float,
        help="Coverage of the prediction set served with each answer (split-conformal).",
    ),
    click.option(
        "--card-images",
        default=False,
        show_default=True,
        type=click.BOOL,
        help="Grad-CAM over real test images (patient data) in the model card's HTML.",
    ),
]
BUDGET = click.option(
    "--budget",
    default="",
    type=_Duration(),
    help="Time budget: minutes (90) or 90m, 2h, 1h30m (default: none). No trial starts after it "
    "is spent; a running trial stops at its next epoch boundary.",
)
WARM_START = click.option(
    "--warm-start",
    default="recipes",
    show_default=True,
    help="Seed a new Optuna study: recipes (documented known-good configurations), recipe:<name> (that one "
    "only), auto (recipes and the finished trials of earlier studies on the same split), none, or study "
    "names to import.",
)


def _none_if_empty(ctx, param, value):  # noqa: ARG001
    return None if value in ("", "none", "None") else value


def _empty_is_none(ctx, param, value):  # noqa: ARG001 - "none" is a value here (random weights)
    return value or None


# Options shared by several commands, defined once (as mlflow/cli.py does).
DATASET = click.option(
    "--dataset",
    default="synthetic",
    show_default=True,
    help="A registered name (brain_mri, dermnet, covid19_radiography, synthetic) or a folder of class sub-folders.",
)
DATA_DIR = click.option(
    "--data-dir",
    default="",
    callback=_none_if_empty,
    help="Where the named dataset lives (else $MEDTUNE_DATA_DIR/<name>, then ./data/<name>).",
)
SEED = click.option("--seed", default=42, show_default=True, type=int, help="Random seed.")


def _class_list(ctx, param, value):  # noqa: ARG001
    return tuple(c.strip() for c in (value or "").split(",") if c.strip())


EXCLUDE_CLASSES = click.option(
    "--exclude-classes",
    default="",
    callback=_class_list,
    help="Class folders to leave out, comma-separated (e.g. a class that label conflicts leave empty).",
)
TRACKING_URI = click.option(
    "--tracking-uri",
    default="",
    callback=_none_if_empty,
    envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI (default: sqlite:///mlflow.db in the project directory).",
)


# Library warnings that say nothing a medtune user can act on (the benchmarks hide them too).
QUIET_WARNINGS = (
    ".*is experimental.*",
    ".*is an experimental feature.*",
    ".*dataset source can be interpreted in multiple ways.*",
    ".*Do not pass an `input_shape`.*",
    ".*Add type hints to the `predict` method.*",
    ".*Skipping variable loading for optimizer.*",
)


def _setup(verbose: bool, tracking_uri: str | None = None) -> None:
    """Configure logging once, quieten TensorFlow, point MLflow at the tracking store."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import warnings

    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    from medtune import progress

    root = logging.getLogger()
    if progress.use_bars():  # on a terminal, log lines are written above the progress bars
        handler = progress.TqdmHandler(sys.stderr)
        handler.setFormatter(root.handlers[0].formatter)
        root.handlers = [handler]
    for noisy in (
        "alembic",
        "mlflow.store.db",
        "mlflow.tracking.fluent",
        "absl",
        "h5py",
        "PIL",
        "matplotlib",
        "optuna",
        "urllib3",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices are not for users
    _require_tensorflow()
    from medtune import tracking

    tracking.configure(tracking_uri)
    tracking.install_signal_handlers()
    tracking.capture_console(root.handlers[0].formatter)  # each step run keeps its console.log


def _require_tensorflow() -> None:
    """TensorFlow comes from an extra (or is preinstalled): without it, say how to get it, in one line."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise MedtuneError(
            "TensorFlow is not installed: pip install 'medtune[cpu]' (CPU) "
            "or 'medtune[gpu]' (NVIDIA GPU on Linux, with CUDA)"
        )


def _verbose_after_command(ctx, param, value):  # noqa: ARG001
    if value:
        ctx.ensure_object(dict)["verbose"] = True


class _Group(click.Group):
    """Every command also takes ``-v/--verbose`` after its name (``medtune split -v``)."""

    def add_command(self, cmd, name=None):
        if not any(p.name == "verbose" for p in cmd.params):  # a command may declare its own
            cmd.params.append(
                click.Option(
                    ["-v", "--verbose"],
                    is_flag=True,
                    expose_value=False,
                    is_eager=True,
                    callback=_verbose_after_command,
                    help="Debug logging.",
                )
            )
        super().add_command(cmd, name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(__version__, "--version", prog_name="medtune")
@click.pass_context
def cli(ctx, verbose):
    """medtune: tracked hyperparameter search for medical-image classifiers."""
    ctx.obj = {"verbose": verbose}


@cli.command()
@DATASET
@DATA_DIR
@click.option("--image-size", default=128, show_default=True, type=int, help="Side of the cached square images.")
@click.option("--val-fraction", default=0.15, show_default=True, type=float)
@click.option(
    "--test-fraction",
    default=0.15,
    show_default=True,
    type=float,
    help="Ignored when the dataset ships an official test folder.",
)
@click.option(
    "--phash-distance",
    default=4,
    show_default=True,
    type=int,
    help="Near-duplicate threshold in perceptual-hash bits (0 = byte-identical only).",
)
@EXCLUDE_CLASSES
@click.option(
    "--new-run", is_flag=True, help="Log a new run even when a finished split of the same files and split exists."
)
@SEED
@TRACKING_URI
@click.pass_context
def split(
    ctx,
    dataset,
    data_dir,
    image_size,
    val_fraction,
    test_fraction,
    phash_distance,
    exclude_classes,
    new_run,
    seed,
    tracking_uri,
):
    """Validate, de-duplicate, split and cache a dataset (a finished identical split is reused)."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.split import SplitOptions, run_split

    out = run_split(
        SplitOptions(dataset, data_dir, image_size, val_fraction, test_fraction, seed, phash_distance, exclude_classes),
        reuse_run=not new_run,
    )
    counts = {s: sum(c.values()) for s, c in out.result.report["counts"].items()}
    click.echo(
        f"split {out.resolved.name}: train={counts.get('train', 0)} val={counts.get('val', 0)} "
        f"test={counts.get('test', 0)} skipped={len(out.result.report.get('skipped', []))} "
        f"ignored={len(out.result.report.get('ignored_files', []))} (both listed in report.json) "
        f"cache={'reused' if out.cache_reused else 'built'} ({out.seconds:.1f} s) "
        f"run={out.run_id}{' (reused)' if out.reused_run else ''}"
    )


def WEIGHTS_OPTION(default: str):  # noqa: N802 - reads like the other option constants
    return click.option(
        "--weights",
        default=default,
        show_default=bool(default),
        callback=_empty_is_none,
        help="Backbone initial weights: imagenet, none, a .h5/.weights.h5 file or a folder of Keras's files"
        + ("" if default else " (default: what the search used)")
        + ".",
    )


def _search_options(optuna_only: bool = True):
    """Options of `search` and its engine shortcuts, defined once (`bayesian` has no Optuna-only ones)."""
    decorators = [
        DATASET,
        DATA_DIR,
        SPACE,
        _auto("--trials", click.INT, "Trials to complete (resumed searches count earlier ones)"),
        _auto("--epochs", click.INT, "Maximum epochs per trial"),
        _auto("--image-size", click.INT, "Search at a smaller size than final training (see README, Performance)"),
        click.option(
            "--image-sizes",
            default="",
            type=_Sizes(),
            help="Resolution rungs, e.g. 64,96,128: trials start small and promising ones continue larger "
            "from their own weights (overrides --image-size).",
        ),
        OBJECTIVE,
        BUDGET,
        click.option(
            "--plateau",
            default=0,
            show_default=True,
            type=int,
            help="Stop after this many finished trials without improvement (0: never).",
        ),
        *([TIMEOUT, STUDY, STORAGE, PRUNER, WARM_START] if optuna_only else [STUDY]),
        CLASS_WEIGHTS,
        click.option("--split-run", default="latest", show_default=True, help="Split run id to train on."),
        WEIGHTS_OPTION("imagenet"),
        SEED,
        TRACKING_URI,
    ]

    def wrap(fn):
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return wrap


def _run_search(ctx, engine, **kw):
    _setup(ctx.obj["verbose"], kw.pop("tracking_uri"))
    from medtune.steps.pipeline import ensure_split
    from medtune.steps.search import SearchOptions, check_options, run_search

    kw["timeout"] = kw.get("timeout") or None
    kw["rungs"] = kw.pop("image_sizes")
    kw["split_run"] = None if kw["split_run"] in ("", "latest") else kw["split_run"]
    options = SearchOptions(engine=engine, **kw)
    check_options(options)
    ensure_split(options.dataset, options.image_size, split_run=options.split_run, data_dir=options.data_dir)
    out = run_search(options)
    best = f"best trial {out.best.number}: {kw['objective']}={out.best.value:.4f}" if out.best else "no trial completed"
    click.echo(f"search {out.study}: {len(out.summaries)} trials in {out.seconds:.0f} s, {best}; run={out.run_id}")


@cli.command()
@ENGINE
@_search_options()
@click.pass_context
def search(ctx, engine, **kw):
    """Hyperparameter search: Optuna TPE (default) or keras-tuner Bayesian/Hyperband."""
    _run_search(ctx, engine, **kw)


@cli.command()
@_search_options()
@click.pass_context
def optuna(ctx, **kw):
    """Shortcut for `search --engine optuna`."""
    _run_search(ctx, "optuna", **kw)


@cli.command()
@_search_options(optuna_only=False)
@click.pass_context
def bayesian(ctx, **kw):
    """Shortcut for `search --engine bayesian` (keras-tuner BayesianOptimization)."""
    _run_search(ctx, "bayesian", **kw)


TRAIN_OPTIONS = [
    click.option("--search-run", default="latest", show_default=True, help="Search run whose best trial to train."),
    click.option(
        "--params", default="", callback=_none_if_empty, help="YAML/JSON file of explicit params (instead of a search)."
    ),
    _auto("--epochs", click.INT, "Maximum epochs (early stopping ends sooner)"),
    _auto("--image-size", click.INT, "Final-training image size"),
    PATIENCE,
    click.option(
        "--mixed-precision",
        default=True,
        show_default=True,
        type=click.BOOL,
        help="Mixed precision on GPU (ignored on CPU).",
    ),
    CLASS_WEIGHTS,
    click.option(
        "--margin",
        default=0.0,
        show_default=True,
        type=float,
        help="Macro-F1 margin a new model must beat the champion by.",
    ),
    WEIGHTS_OPTION(""),
    _auto("--ensemble", click.INT, "Members (seeds of the configuration) averaged in one model", "the plan's, 1"),
    BUDGET,
    TTA,
    *TRUST_OPTIONS,
]


def _apply(options):
    def wrap(fn):
        for deco in reversed(options):
            fn = deco(fn)
        return fn

    return wrap


def _train_summary(out) -> str:
    m = out.metrics
    alias = f" -> @{out.decision.alias}" if out.decision else ""
    return (
        f"train: test accuracy={m['test_accuracy']:.4f} macro_f1={m['test_macro_f1']:.4f} "
        f"roc_auc_macro={m.get('test_roc_auc_macro', float('nan')):.4f}; "
        f"model {out.model_name} v{out.model_version}{alias}; run={out.run_id} ({out.seconds:.0f} s)"
    )


@cli.command()
@DATASET
@DATA_DIR
@_apply(TRAIN_OPTIONS)
@SEED
@TRACKING_URI
@click.pass_context
def train(
    ctx,
    dataset,
    data_dir,
    search_run,
    params,
    epochs,
    image_size,
    patience,
    mixed_precision,
    class_weights,
    margin,
    weights,
    ensemble,
    budget,
    tta,
    calibrate,
    conformal_level,
    card_images,
    seed,
    tracking_uri,
):
    """Train the best trial of a search (or explicit params), evaluate, register and gate @champion."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.pipeline import ensure_split
    from medtune.steps.train import TrainOptions, run_train

    ensure_split(dataset, image_size, data_dir=data_dir)
    out = run_train(
        TrainOptions(
            dataset=dataset,
            data_dir=data_dir,
            search_run=search_run,
            params=params,
            epochs=epochs,
            image_size=image_size,
            patience=patience,
            mixed_precision=mixed_precision,
            class_weights=class_weights,
            margin=margin,
            weights=weights,
            ensemble=ensemble,
            budget=budget,
            tta=tta,
            calibrate=calibrate,
            conformal_level=conformal_level,
            card_images=card_images,
            seed=seed,
        )
    )
    click.echo(_train_summary(out))


@cli.command()
@click.option("--model-uri", required=True, help="e.g. models:/medtune-brain_mri@champion or runs:/<id>/model")
@click.option(
    "--dataset", default="", callback=_none_if_empty, help="Dataset whose test split to use (default: the model's)."
)
@DATA_DIR
@TRACKING_URI
@click.pass_context
def evaluate(ctx, model_uri, dataset, data_dir, tracking_uri):
    """Evaluate a model on the test split, or on any folder of class sub-folders (--data-dir)."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.evaluate import EvaluateOptions, run_evaluate

    run_id, ev = run_evaluate(EvaluateOptions(model_uri=model_uri, dataset=dataset, data_dir=data_dir))
    m = ev.metrics
    click.echo(
        f"evaluate: accuracy={m['test_accuracy']:.4f} macro_f1={m['test_macro_f1']:.4f} "
        f"roc_auc_macro={m.get('test_roc_auc_macro', float('nan')):.4f} run={run_id}"
    )


@cli.command()
@click.option("--model", "model_uri", required=True, help="Model URI, e.g. models:/medtune-dermnet@champion.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--output", default="predictions.csv", show_default=True, type=click.Path())
@click.option("--gradcam", default="", callback=_none_if_empty, type=click.Path(), help="Folder for heatmap overlays.")
@TRACKING_URI
@click.pass_context
def predict(ctx, model_uri, inputs, output, gradcam, tracking_uri):
    """Predict labels for image files or folders; writes a CSV (bad files are listed and skipped)."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.predict import run_predict

    out = run_predict(model_uri, list(inputs), output, gradcam)
    click.echo(f"predict: {out.n_ok} images -> {output}; {len(out.bad)} skipped")
    for path, reason in out.bad:
        click.echo(f"  skipped {path}: {reason}", err=True)


@cli.command()
@click.option(
    "--model",
    default="",
    callback=_none_if_empty,
    help="Preselected model, e.g. models:/medtune-brain_mri@champion (default: the first medtune-* model's @champion).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 opens the demo to the network (then --auth or --no-auth is required).",
)
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--max-file-size", default="20mb", show_default=True, help="Largest upload accepted, e.g. 5mb, 1gb.")
@click.option(
    "--auth",
    envvar="MEDTUNE_APP_AUTH",
    default=None,
    help="user:password of the page's login (or $MEDTUNE_APP_AUTH, which `ps` does not show).",
)
@click.option("--no-auth", is_flag=True, help="Serve beyond loopback with no login, on purpose.")
@TRACKING_URI
@click.pass_context
def app(ctx, model, host, port, max_file_size, auth, no_auth, tracking_uri):
    """A web demo (Gradio) of the registered models: upload an image, see the label, probabilities and Grad-CAM."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.app import run_app

    run_app(model, host, port, max_file_size, auth=auth, no_auth=no_auth)


@cli.command(name="main")
@DATASET
@DATA_DIR
@EXCLUDE_CLASSES
@BUDGET
@ENGINE
@SPACE
@_auto("--trials", click.INT, "Search trials")
@_auto("--search-epochs", click.INT, "Maximum epochs per search trial")
@_auto("--search-image-size", click.INT, "Search image size")
@_auto("--epochs", click.INT, "Final-training epochs")
@_auto("--image-size", click.INT, "Final-training image size")
@_auto("--ensemble", click.INT, "Final-training ensemble members")
@OBJECTIVE
@PRUNER
@CLASS_WEIGHTS
@TIMEOUT
@STUDY
@STORAGE
@WARM_START
@PATIENCE
@click.option(
    "--margin",
    default=0.0,
    show_default=True,
    type=float,
    help="Macro-F1 margin a new model must beat the champion by.",
)
@click.option(
    "--mixed-precision",
    default=True,
    show_default=True,
    type=click.BOOL,
    help="Mixed precision on GPU for final training (ignored on CPU).",
)
@WEIGHTS_OPTION("imagenet")
@TTA
@_apply(TRUST_OPTIONS)
@SEED
@TRACKING_URI
@click.pass_context
def main_pipeline(ctx, tracking_uri, timeout, **kw):
    """Split, search, train, evaluate and promote in one go (each step its own run)."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.pipeline import PipelineOptions, run_pipeline

    out = run_pipeline(PipelineOptions(timeout=timeout or None, **kw))
    click.echo(out.summary())


def main() -> None:
    """Console-script entry point: one-line errors, exit code 2 for user errors, 130 on interrupt."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("medtune: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MedtuneError as exc:
        click.echo(f"medtune: error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # an MLflow lookup medtune did not foresee: still one line
        from medtune.tracking import mlflow_error_line

        line = mlflow_error_line(exc)
        if line is None:
            raise
        click.echo(f"medtune: error: {line}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("medtune: interrupted; runs were ended KILLED and the search can be resumed", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
