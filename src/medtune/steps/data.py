"""Find the split a later step trains on, and its cached arrays at the size that step needs."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medtune import tracking
from medtune.datasets.cache import CachedSplits, ensure_cache
from medtune.datasets.registry import resolve_dataset
from medtune.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LoadedSplit:
    run_id: str
    dataset: str
    root: Path
    classes: list[str]
    manifest: pd.DataFrame  # paths relative to root, as logged
    report: dict
    cache: CachedSplits


def load_split(
    dataset: str,
    image_size: int,
    *,
    split_run: str | None = None,
    data_dir: str | None = None,
) -> LoadedSplit:
    """The latest finished split of ``dataset`` (or ``split_run``), cached at ``image_size``.

    Only reads: a dataset never split is a one-line error (the steps that need a split call
    :func:`medtune.steps.prerequisites.ensure_split` first).
    """
    from medtune.steps.split import CHANNELS, absolute_manifest

    name = resolve_dataset(dataset, data_dir).name if dataset else dataset
    if split_run in (None, "", "latest"):
        runs = tracking.find_runs(name, "split", max_results=1)
        if not runs:
            raise DataError(f"dataset={dataset}: no finished split run; run `medtune split --dataset {dataset}` first")
        run = runs[0]
    else:
        run = tracking.get_step_run(split_run, "split", "split_run", name)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = pd.read_csv(
            tracking.download_artifact(run.info.run_id, "manifest.csv", Path(tmp)), dtype=str, keep_default_na=False
        )
        report = json.loads(tracking.download_artifact(run.info.run_id, "report.json", Path(tmp)).read_text())
    root = Path(run.data.tags.get("medtune.dataset_root", ""))
    if not root.is_dir():  # another machine: find the same dataset where this one keeps it
        root = resolve_dataset(dataset, data_dir).root
    classes = list(report["classes"])
    cache, reused = ensure_cache(absolute_manifest(manifest, root), classes, image_size, CHANNELS)
    log.info("Split run %s: %s cache at %d px (%s)", run.info.run_id, name, image_size, "reused" if reused else "built")
    return LoadedSplit(run.info.run_id, name, root, classes, manifest, report, cache)
