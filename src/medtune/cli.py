"""The ``medtune`` command line: a thin click group, one function per step.

Every option is declared once in :mod:`medtune.options`; the click options here are built from
those declarations. Heavy imports (TensorFlow, MLflow) happen inside the commands, so
``medtune --help`` is instant.
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
from medtune.options import AUTO, OPTIONS

log = logging.getLogger("medtune")


class _Auto(click.ParamType):
    """A value, or ``auto`` (the default): decided by the plan (see medtune.planning.rules)."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, inner.name

    def convert(self, value, param, ctx):
        if value is None or str(value).strip().lower() in ("", AUTO):
            return None
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param, ctx=None):  # noqa: ARG002
        choices = getattr(self.inner, "choices", None)
        return f"[{'|'.join((*choices, AUTO))}]" if choices else f"{self.name.upper()}|{AUTO}"


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


_TYPES = {
    "str": click.STRING,
    "int": click.INT,
    "float": click.FLOAT,
    "bool": click.BOOL,
    "duration": _Duration(),
    "sizes": _Sizes(),
    "classes": click.STRING,
    "engine": click.Choice([*ENGINES, *ENGINE_ALIASES]),
}
_CHOICES = {"objective": tuple(OBJECTIVES), "pruner": PRUNERS}
_KEEP_NONE_WORD = ("search.weights", "train.weights")  # "none" is a value there (random weights)


def _convert(key: str, value):
    """The value a step receives for what click parsed (empty means unset)."""
    kind = OPTIONS[key].kind
    if kind == "classes":
        return tuple(c.strip() for c in (value or "").split(",") if c.strip())
    if kind == "engine":
        return ENGINE_ALIASES.get(value, value)
    if key == "split_run":
        return None if value in ("", "latest", None) else value
    if key == "timeout":
        return value or None  # 0 is no limit
    if kind == "str" and OPTIONS[key].default is None:
        return None if value in ("", None) or (value in ("none", "None") and key not in _KEEP_NONE_WORD) else value
    return value


def option(key: str, *, name: str | None = None, flag: str | None = None, required: bool = False):
    """The click option for the declaration ``key`` (``train.epochs`` is ``--epochs``), named ``name``."""
    opt = OPTIONS[key]
    name = name or key.split(".")[-1]
    flag = flag or f"--{name.replace('_', '-')}"
    if opt.kind == "flag":
        return click.option(flag, name, is_flag=True, help=opt.help)
    kind = click.Choice(opt.choices or _CHOICES[name]) if opt.kind == "choice" else _TYPES[opt.kind]
    help_text = opt.help
    if opt.auto:
        kind, shown, help_text = _Auto(kind), AUTO, f"{opt.help} (auto: {opt.auto})"
    elif opt.shown is not None:
        shown = opt.shown
    elif opt.default is None or opt.kind in ("classes", "duration"):
        shown = ""
    else:
        shown = opt.default
    kwargs = {"required": True} if required else {"default": shown, "show_default": shown not in ("", None)}
    return click.option(
        flag,
        name,
        type=kind,
        envvar=opt.envvar,
        callback=lambda ctx, param, value: _convert(key, value),  # noqa: ARG005
        help=help_text,
        **kwargs,
    )


def options(*keys: str):
    """The options of ``keys`` in order; ``"name=key"`` gives the declaration ``key`` another name."""

    def wrap(fn):
        for spec in reversed(keys):
            name, _, key = spec.rpartition("=")
            fn = option(key, name=name or None)(fn)
        return fn

    return wrap


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


SPLIT = (
    "dataset",
    "data_dir",
    "split.image_size",
    "val_fraction",
    "test_fraction",
    "phash_distance",
    "exclude_classes",
    "window",
    "labels",
)
SEARCH = (
    "dataset",
    "data_dir",
    "space",
    "trials",
    "search.epochs",
    "search.image_size",
    "image_sizes",
    "objective",
    "budget",
    "plateau",
)
OPTUNA_ONLY = ("timeout", "study", "storage", "pruner", "warm_start")
SEARCH_END = ("class_weights", "split_run", "weights=search.weights", "seed", "tracking_uri")
TRUST = ("calibrate", "conformal_level", "card_images")
TRAIN = (
    "dataset",
    "data_dir",
    "search_run",
    "params",
    "train.epochs",
    "train.image_size",
    "patience",
    "mixed_precision",
    "class_weights",
    "margin",
    "weights=train.weights",
    "ensemble",
    "folds",
    "budget",
    "tta",
    *TRUST,
    "seed",
    "tracking_uri",
)
MAIN = (
    "dataset",
    "data_dir",
    "exclude_classes",
    "window",
    "labels",
    "budget",
    "engine",
    "space",
    "trials",
    "search_epochs=search.epochs",
    "search_image_size=search.image_size",
    "epochs=train.epochs",
    "image_size=train.image_size",
    "ensemble",
    "folds",
    "objective",
    "pruner",
    "class_weights",
    "timeout",
    "study",
    "storage",
    "warm_start",
    "patience",
    "margin",
    "mixed_precision",
    "weights=search.weights",
    "tta",
    *TRUST,
    "seed",
    "tracking_uri",
)


@cli.command()
@options(*SPLIT, "new_run", "seed", "tracking_uri")
@click.pass_context
def split(ctx, new_run, tracking_uri, **kw):
    """Validate, de-duplicate, split and cache a dataset (a finished identical split is reused)."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.split import SplitOptions, run_split

    out = run_split(SplitOptions(**kw), reuse_run=not new_run)
    counts = {s: sum(c.values()) for s, c in out.result.report["counts"].items()}
    click.echo(
        f"split {out.resolved.name}: train={counts.get('train', 0)} val={counts.get('val', 0)} "
        f"test={counts.get('test', 0)} skipped={len(out.result.report.get('skipped', []))} "
        f"ignored={len(out.result.report.get('ignored_files', []))} (both listed in report.json) "
        f"cache={'reused' if out.cache_reused else 'built'} ({out.seconds:.1f} s) "
        f"run={out.run_id}{' (reused)' if out.reused_run else ''}"
    )


def _run_search(ctx, engine, tracking_uri, image_sizes, **kw):
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.pipeline import search_with_split
    from medtune.steps.search import SearchOptions

    out = search_with_split(SearchOptions(engine=engine, rungs=image_sizes, **kw))
    best = f"best trial {out.best.number}: {kw['objective']}={out.best.value:.4f}" if out.best else "no trial completed"
    click.echo(f"search {out.study}: {len(out.summaries)} trials in {out.seconds:.0f} s, {best}; run={out.run_id}")


@cli.command()
@options("engine", *SEARCH, *OPTUNA_ONLY, *SEARCH_END)
@click.pass_context
def search(ctx, engine, **kw):
    """Hyperparameter search: Optuna TPE (default) or keras-tuner Bayesian/Hyperband."""
    _run_search(ctx, engine, **kw)


@cli.command()
@options(*SEARCH, *OPTUNA_ONLY, *SEARCH_END)
@click.pass_context
def optuna(ctx, **kw):
    """Shortcut for `search --engine optuna`."""
    _run_search(ctx, "optuna", **kw)


@cli.command()
@options(*SEARCH, "study", *SEARCH_END)
@click.pass_context
def bayesian(ctx, **kw):
    """Shortcut for `search --engine bayesian` (keras-tuner BayesianOptimization)."""
    _run_search(ctx, "bayesian", **kw)


def _train_summary(out) -> str:
    m = out.metrics
    alias = f" -> @{out.decision.alias}" if out.decision else ""
    return (
        f"train: test accuracy={m['test_accuracy']:.4f} macro_f1={m['test_macro_f1']:.4f} "
        f"roc_auc_macro={m.get('test_roc_auc_macro', float('nan')):.4f}; "
        f"model {out.model_name} v{out.model_version}{alias}; run={out.run_id} ({out.seconds:.0f} s)"
    )


@cli.command()
@options(*TRAIN)
@click.pass_context
def train(ctx, tracking_uri, **kw):
    """Train the best trial of a search (or explicit params), evaluate, register and gate @champion."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.pipeline import train_with_split
    from medtune.steps.train import TrainOptions

    click.echo(_train_summary(train_with_split(TrainOptions(**kw))))


@cli.command()
@option("model_uri", required=True)
@options("dataset=evaluate.dataset", "data_dir", "tracking_uri")
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
@option("model_uri", flag="--model", required=True)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@options("output", "gradcam", "tracking_uri")
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
@options("model=app.model", "host", "port", "max_file_size", "auth", "no_auth", "tracking_uri")
@click.pass_context
def app(ctx, model, host, port, max_file_size, auth, no_auth, tracking_uri):
    """A web demo (Gradio) of the registered models: upload an image, see the label, probabilities and Grad-CAM."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.app import run_app

    run_app(model, host, port, max_file_size, auth=auth, no_auth=no_auth)


@cli.command(name="main")
@options(*MAIN)
@click.pass_context
def main_pipeline(ctx, tracking_uri, **kw):
    """Split, search, train, evaluate and promote in one go (each step its own run)."""
    _setup(ctx.obj["verbose"], tracking_uri)
    from medtune.steps.pipeline import PipelineOptions, run_pipeline

    click.echo(run_pipeline(PipelineOptions(**kw)).summary())


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
