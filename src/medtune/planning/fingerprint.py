"""Fingerprints of the data and of the machine: the plain facts a plan is derived from.

As nnU-Net fingerprints a dataset before it configures itself, medtune reads, after ``split``:
images per class and split, the imbalance ratio, the distribution of image sides, the share of
colour images, and what de-duplication removed; and of the machine: GPUs, CPU cores, memory.
Both are plain dataclasses, logged as ``fingerprint.json``; the rules that use them live in
:mod:`medtune.planning.rules` and are tested on fabricated fingerprints.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["DataFingerprint", "MachineFingerprint", "image_stats", "usable_cpus"]


@dataclass(frozen=True)
class DataFingerprint:
    classes: tuple[str, ...]
    train_per_class: Mapping[str, int]
    n_train: int
    n_val: int
    n_test: int
    median_side: int  # median of each image's shorter side, in pixels
    small_side: int  # 10th percentile of the shorter side
    colour_fraction: float  # share of images whose channels differ (not grey stored as RGB)
    duplicates_removed: int = 0
    label_conflicts: int = 0
    test_duplicates_dropped: int = 0

    @property
    def imbalance_ratio(self) -> float:
        counts = [c for c in self.train_per_class.values()]
        return max(counts) / max(1, min(counts)) if counts else 1.0

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "classes": list(self.classes),
            "train_per_class": dict(self.train_per_class),
            "imbalance_ratio": round(self.imbalance_ratio, 3),
        }

    @classmethod
    def from_split(cls, report: Mapping, stats: Mapping[str, float]) -> DataFingerprint:
        """From a split report (``counts`` per split and class, removal counts) and :func:`image_stats`."""
        counts = report["counts"]
        train = {c: int(n) for c, n in counts.get("train", {}).items()}
        return cls(
            classes=tuple(sorted(train)),
            train_per_class=train,
            n_train=sum(train.values()),
            n_val=int(sum(counts.get("val", {}).values())),
            n_test=int(sum(counts.get("test", {}).values())),
            median_side=int(stats["median_side"]),
            small_side=int(stats["small_side"]),
            colour_fraction=float(stats["colour_fraction"]),
            duplicates_removed=_count(report.get("removed_duplicates", 0)),
            label_conflicts=_count(report.get("label_conflicts", report.get("conflicted", 0))),
            test_duplicates_dropped=int(report.get("test_dropped_duplicates_of_train", 0)),
        )


def _count(value) -> int:
    """A report entry that is either a count or the list of what it counts."""
    return len(value) if isinstance(value, list) else int(value)


def image_stats(paths: Sequence[str], sample: int = 400, seed: int = 0) -> dict[str, float]:
    """Sides and colour of up to ``sample`` images (headers for the sides; pixels for the colour).

    A colour image is one whose RGB channels differ by more than a few levels somewhere: grey
    scans saved as RGB JPEGs (most MRI and X-ray sets) count as grey.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in rng.permutation(len(paths))[:sample]] if len(paths) > sample else list(paths)
    sides, colour = [], []
    for path in chosen:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
                if im.mode in ("L", "LA", "I", "I;16", "1", "F"):
                    colour.append(False)
                    continue
                small = np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.int16)
        except OSError:
            continue  # split already reported unreadable files
        spread = small.max(axis=2) - small.min(axis=2)
        colour.append(bool((spread > 8).mean() > 0.05))
    if not sides:
        return {"median_side": 0, "small_side": 0, "colour_fraction": 0.0, "sampled": 0}
    return {
        "median_side": float(np.median(sides)),
        "small_side": float(np.percentile(sides, 10)),
        "colour_fraction": float(np.mean(colour)) if colour else 0.0,
        "sampled": len(sides),
    }


@dataclass(frozen=True)
class MachineFingerprint:
    gpus: int
    cpu_cores: int
    memory_gib: float
    gpu_memory_gib: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def detect(cls) -> MachineFingerprint:
        """This machine: GPUs TensorFlow sees (``$MEDTUNE_GPUS`` overrides, e.g. 0 to plan for CPU),
        usable CPU cores (:func:`usable_cpus`), memory. The one machine detection of medtune."""
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            memory = 0.0
        env = os.environ.get("MEDTUNE_GPUS", "").strip()
        devices = []
        if not env.isdigit() or int(env):
            import tensorflow as tf

            devices = tf.config.list_physical_devices("GPU")  # none when $MEDTUNE_GPUS plans for absent GPUs
        gpus = int(env) if env.isdigit() else len(devices)
        gpu_memory = 0.0
        if gpus and devices:
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(devices[0])
            gpu_memory = float(details.get("memory_limit", 0) or 0) / 2**30
        return cls(gpus=gpus, cpu_cores=usable_cpus(), memory_gib=round(memory, 1), gpu_memory_gib=round(gpu_memory, 1))

    def describe(self) -> str:
        return f"{self.gpus} GPU(s), {self.cpu_cores} CPU cores" if self.gpus else f"CPU only, {self.cpu_cores} cores"


def usable_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)
