"""The ``split`` step: validate, de-duplicate, split and cache a dataset, tracked in MLflow."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medtune import settings, tracking
from medtune.datasets.cache import CHANNELS, CachedSplits, ensure_cache
from medtune.datasets.dicom import window_label
from medtune.datasets.layout import detect_layout, table_layout
from medtune.datasets.patients import dataset_keys
from medtune.datasets.registry import ResolvedDataset, resolve_dataset, safe_name
from medtune.datasets.scan import scan_dataset
from medtune.datasets.splitting import SplitResult, make_split
from medtune.errors import ConfigError
from medtune.options import default

log = logging.getLogger(__name__)


@dataclass
class SplitOptions:
    dataset: str = default("dataset")
    data_dir: str | None = default("data_dir")
    image_size: int = default("split.image_size")
    val_fraction: float = default("val_fraction")
    test_fraction: float = default("test_fraction")
    seed: int = default("seed")
    phash_distance: int = default("phash_distance")
    exclude_classes: tuple[str, ...] = default("exclude_classes")
    labels: str | None = default("labels")
    window: str | None = default("window")

    def check(self) -> None:
        from medtune.datasets.dicom import parse_window

        parse_window(self.window)
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size={self.image_size}: expected 16..1024 pixels")
        if self.phash_distance < 0 or self.phash_distance > 32:
            raise ConfigError(f"phash_distance={self.phash_distance}: expected 0..32 bits")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name}={value}: expected a fraction between 0 and 1 (exclusive)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                f"val_fraction={self.val_fraction} + test_fraction={self.test_fraction} = "
                f"{self.val_fraction + self.test_fraction:.2f}: at least 10 % must be left for training"
            )


@dataclass
class SplitOutcome:
    run_id: str | None
    resolved: ResolvedDataset
    result: SplitResult
    manifest_hash: str
    cache: CachedSplits
    cache_reused: bool
    seconds: float
    reused_run: bool = False


def prepare(opts: SplitOptions) -> tuple[ResolvedDataset, SplitResult, dict, float]:
    """Resolve, scan, de-duplicate and split; returns the split and the arrays decoded on the way."""
    opts.check()
    t0 = time.perf_counter()
    resolved = resolve_dataset(opts.dataset, opts.data_dir)
    keys = dataset_keys(settings.cache_dir() / "index" / f"{safe_name(resolved.name)}.salt")  # never logged
    if opts.labels:
        layout = table_layout(resolved.root, opts.labels, keys)
    else:
        layout = detect_layout(resolved.root, resolved.spec.classes if resolved.spec else None)
    if opts.exclude_classes:
        layout = layout.without(opts.exclude_classes)
        log.info("Leaving out %d class(es): %s", len(opts.exclude_classes), ", ".join(opts.exclude_classes))
    window = window_label(opts.window)
    suffix = "" if window == "file" else f"-{window}"  # the index keeps pixels' hashes: one per window
    index = settings.cache_dir() / "index" / f"{safe_name(resolved.name)}{suffix}.json"
    log.info("Scanning %s", resolved.root)
    from medtune.progress import Counter

    with Counter("validating files", 0, "file") as bar:
        scan, arrays = scan_dataset(
            layout,
            index_path=index,
            keep_size=opts.image_size,
            channels=CHANNELS,
            progress=bar.to,
            window=window,
            keys=keys,
        )
    log.info(
        "Scanned %d valid images in %d classes (%d skipped)", len(scan.records), len(scan.classes), len(scan.skipped)
    )
    result = make_split(
        scan,
        val_fraction=opts.val_fraction,
        test_fraction=opts.test_fraction,
        seed=opts.seed,
        phash_distance=opts.phash_distance,
    )
    return resolved, result, arrays, t0


def relative_manifest(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The manifest as logged: paths relative to the dataset folder, so it travels between machines."""
    out = manifest.copy()
    out["path"] = [str(Path(p).relative_to(root)) if Path(p).is_absolute() else p for p in out["path"]]
    return out


def run_split(opts: SplitOptions, *, reuse_run: bool = False) -> SplitOutcome:
    """Run the split step; with ``reuse_run`` a finished split run of the same manifest is reused."""
    from medtune.datasets.cache import manifest_hash

    resolved, result, arrays, t0 = prepare(opts)
    classes = list(result.report["classes"])
    mhash = manifest_hash(result.manifest)
    window = window_label(opts.window)
    cache, reused = ensure_cache(result.manifest, classes, opts.image_size, CHANNELS, arrays=arrays, window=window)
    seconds = time.perf_counter() - t0
    log.info("Cache %s (%s) in %.1f s", cache.path, "reused" if reused else "built", seconds)

    if reuse_run:
        previous = tracking.find_runs(
            resolved.name,
            "split",
            extra_filter=f"tags.`medtune.manifest_hash` = '{mhash}' and params.window = '{window}'",
            max_results=10,
        )
        if previous:
            run_id = previous[0].info.run_id
            log.info("Reusing finished split run %s (same files, same split)", run_id)
            tracking.link_launcher(run_id, f"reused the finished split run {run_id} (same files, same split)")
            return SplitOutcome(run_id, resolved, result, mhash, cache, reused, seconds, reused_run=True)

    with tracking.step_run(resolved.name, "split", run_name=f"split-{resolved.name}") as run:
        _log_split(run, opts, resolved, result, mhash, cache, reused, seconds)
        return SplitOutcome(run.run_id, resolved, result, mhash, cache, reused, seconds)


def _log_split(run, opts, resolved, result, mhash, cache, reused, seconds) -> None:
    from medtune import reports

    report = result.report
    manifest = relative_manifest(result.manifest, resolved.root)
    run.params(
        {
            "dataset": resolved.name,
            "data_dir": str(resolved.root),
            "image_size": opts.image_size,
            "channels": CHANNELS,
            "val_fraction": opts.val_fraction,
            "test_fraction": opts.test_fraction,
            "seed": opts.seed,
            "phash_distance": opts.phash_distance,
            "window": window_label(opts.window),  # the one DICOM value logged: how pixels were windowed
            "n_classes": len(report["classes"]),
            **({"exclude_classes": ",".join(opts.exclude_classes)} if opts.exclude_classes else {}),
            **({"labels": str(opts.labels)} if opts.labels else {}),
        }
    )
    counts = report["counts"]
    metrics = {f"n_{split}": sum(c.values()) for split, c in counts.items()}
    metrics.update(
        n_skipped=len(report.get("skipped", [])),
        n_removed_duplicates=len(report.get("removed_duplicates", [])),
        n_label_conflicts=len(report.get("label_conflicts", [])),
        n_duplicate_groups=report.get("duplicate_groups", {}).get("count", 0)
        if isinstance(report.get("duplicate_groups"), dict)
        else len(report.get("duplicate_groups", [])),
        n_test_dropped_duplicates_of_train=report.get("test_dropped_duplicates_of_train", 0),
        n_near_candidate_pairs=report["near_duplicate_pairs"]["candidates"],
        n_near_confirmed_pairs=report["near_duplicate_pairs"]["confirmed"],
        split_seconds=seconds,
        **{f"n_patients_{split}": n for split, n in report["patients"]["counts"].items()},
    )
    run.metrics(metrics)
    run.tags(
        {
            "medtune.manifest_hash": mhash,
            "medtune.cache_key": cache.path.name,
            "medtune.cache_reused": str(reused).lower(),
            "medtune.dataset_root": str(resolved.root),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        mpath = Path(tmp) / "manifest.csv"
        manifest.to_csv(mpath, index=False)
        run.file(mpath)
    run.json(report, "report.json")
    tracking.log_manifest(manifest, resolved.root, resolved.name, "split")
    run.figure(reports.class_counts_figure(counts), "class_counts.png")
    samples = {}
    for idx, cls in enumerate(cache.classes):
        pick = [i for i, y in enumerate(cache.y["train"]) if y == idx][:6]
        samples[cls] = [cache.x["train"][i] for i in pick]
    run.figure(reports.sample_grid(samples), "samples.png")
