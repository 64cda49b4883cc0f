"""A finished split run, found for a later step, with its cached arrays at the size that step needs."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medtune.datasets.cache import CHANNELS, CachedSplits, absolute_manifest, ensure_cache
from medtune.datasets.registry import dataset_name, resolve_dataset
from medtune.errors import DataError
from medtune.tracking.lookups import get_step_run
from medtune.tracking.store import download_artifact, find_runs

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
    window: str = "file"  # the DICOM window the split was decoded with (medtune.datasets.dicom)


def load_split(
    dataset: str,
    image_size: int,
    *,
    split_run: str | None = None,
    data_dir: str | None = None,
) -> LoadedSplit:
    """The latest finished split of ``dataset`` (or ``split_run``), cached at ``image_size``.

    Only reads: a dataset never split is a one-line error (the CLI and the Python API run the
    split step first, :func:`medtune.steps.pipeline.ensure_split`).
    """
    name = dataset_name(dataset) if dataset else dataset  # no need to find its files for the name
    if split_run in (None, "", "latest"):
        runs = find_runs(name, "split", max_results=1)
        if not runs:
            raise DataError(f"dataset={dataset}: no finished split run; run `medtune split --dataset {dataset}` first")
        run = runs[0]
    else:
        run = get_step_run(split_run, "split", "split_run", name)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = pd.read_csv(
            download_artifact(run.info.run_id, "manifest.csv", Path(tmp)), dtype=str, keep_default_na=False
        )
        report = json.loads(download_artifact(run.info.run_id, "report.json", Path(tmp)).read_text())
    root = Path(run.data.tags.get("medtune.dataset_root", ""))
    if not root.is_dir():  # another machine: find the same dataset where this one keeps it
        root = resolve_dataset(dataset, data_dir).root
    classes = list(report["classes"])
    window = run.data.params.get("window", "file")
    cache, reused = ensure_cache(absolute_manifest(manifest, root), classes, image_size, CHANNELS, window=window)
    log.info("Split run %s: %s cache at %d px (%s)", run.info.run_id, name, image_size, "reused" if reused else "built")
    return LoadedSplit(run.info.run_id, name, root, classes, manifest, report, cache, window)
