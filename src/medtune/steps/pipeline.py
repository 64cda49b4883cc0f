"""``main``: split, search, train (with evaluation and promotion), each step its own run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class PipelineOptions:
    dataset: str = "synthetic"
    data_dir: str | None = None
    engine: str = "optuna"
    space: str | None = None  # None (auto): sized from the machine, as for the separate steps
    trials: int | None = None
    search_epochs: int | None = None
    search_image_size: int | None = None
    epochs: int | None = None
    image_size: int | None = None
    objective: str = "val_macro_f1"
    pruner: str | None = None
    class_weights: bool = True
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    patience: int = 8
    margin: float = 0.0
    mixed_precision: bool = True
    weights: str = "imagenet"
    seed: int = 42


@dataclass
class PipelineOutcome:
    split_run: str
    search_run: str
    train: object
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        m = self.train.metrics
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        alias = f" @{self.train.decision.alias}" if self.train.decision else ""
        return (f"main: test accuracy={m['test_accuracy']:.4f} macro_f1={m['test_macro_f1']:.4f} "
                f"roc_auc_macro={m.get('test_roc_auc_macro', float('nan')):.4f}; "
                f"{self.train.model_name} v{self.train.model_version}{alias}; {steps}")


def run_pipeline(opts: PipelineOptions) -> PipelineOutcome:
    """Split (reusing a finished split of the same files), search, train with evaluation and the gate.

    Under ``mlflow run -e main`` the launcher run stays the pipeline's own run: no step adopts it
    (each step logs its own run in ``medtune-<dataset>``); it gets tags with the step run ids.
    """
    import os

    from medtune.steps.search import SearchOptions, run_search
    from medtune.steps.split import SplitOptions, run_split
    from medtune.steps.train import TrainOptions, run_train

    from medtune.datasets.registry import dataset_name
    from medtune.plan import fill
    from medtune.steps.search import check_options

    search_opts = SearchOptions(dataset=opts.dataset, data_dir=opts.data_dir, engine=opts.engine, space=opts.space,
                                trials=opts.trials, epochs=opts.search_epochs, image_size=opts.search_image_size,
                                objective=opts.objective, pruner=opts.pruner, class_weights=opts.class_weights,
                                timeout=opts.timeout, study=opts.study, storage=opts.storage, seed=opts.seed,
                                weights=opts.weights)
    check_options(search_opts)  # every option is checked before the first step starts
    if opts.epochs is not None and opts.epochs < 1:
        from medtune.errors import ConfigError

        raise ConfigError(f"epochs={opts.epochs}: expected at least 1")
    fill(opts, dataset_name(opts.dataset), {"epochs": "final_epochs", "image_size": "final_image_size"})
    split_opts = SplitOptions(dataset=opts.dataset, data_dir=opts.data_dir, image_size=opts.image_size, seed=opts.seed)
    split_opts.check()
    launcher_id = os.environ.pop("MLFLOW_RUN_ID", None)
    seconds = {}
    t = time.perf_counter()
    split = run_split(split_opts, reuse_run=True)
    seconds["split"] = time.perf_counter() - t
    _link(launcher_id, {"medtune.split_run_id": split.run_id})
    t = time.perf_counter()
    search_opts.split_run = split.run_id
    search = run_search(search_opts)
    seconds["search"] = time.perf_counter() - t
    _link(launcher_id, {"medtune.search_run_id": search.run_id}, step_run=search.run_id)
    if search.best is None:
        from medtune.errors import ConfigError

        raise ConfigError(f"search run {search.run_id}: no trial completed, nothing to train (see its trial runs)")
    t = time.perf_counter()
    train = run_train(TrainOptions(dataset=opts.dataset, data_dir=opts.data_dir, search_run=search.run_id,
                                   epochs=opts.epochs, image_size=opts.image_size, patience=opts.patience,
                                   mixed_precision=opts.mixed_precision, margin=opts.margin, seed=opts.seed,
                                   split_run=split.run_id, weights=opts.weights))
    seconds["train+evaluate"] = time.perf_counter() - t
    _link(launcher_id, {"medtune.train_run_id": train.run_id, "medtune.model_version": train.model_version or "",
                        "medtune.decision": train.decision.alias if train.decision else ""}, step_run=train.run_id)
    log.info("Pipeline done: %s", ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return PipelineOutcome(split.run_id, search.run_id, train, seconds)


def _link(launcher_id: str | None, tags: dict, step_run: str | None = None) -> None:
    """Tag the ``mlflow run`` launcher run with a step's run id (and the step run with the launcher's)."""
    if not launcher_id:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        for key, value in {"medtune.step": "main", **tags}.items():
            client.set_tag(launcher_id, key, str(value))
        if step_run:
            client.set_tag(step_run, "medtune.pipeline_run_id", launcher_id)
    except MlflowException as exc:
        log.warning("could not link the launcher run %s: %s", launcher_id, exc)
