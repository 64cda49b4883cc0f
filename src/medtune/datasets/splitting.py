"""Leak-free train/val/test splits from a scanned dataset.

The rules, applied in this order:

1. Records in a duplicate group whose members carry different labels (label conflicts) are
   left out of every split.
2. With an official test folder, test images grouped with a training image (exact or near
   duplicates) are dropped: they would leak training data into the test score.
3. Exact duplicates (same bytes) keep one representative (from ``train`` if possible, then the
   lexicographically first path); near duplicates are all kept, in one split together.
4. Groups (or single images) are assigned to splits class by class, in a seeded random order
   over groups sorted by a stable key, so the result depends only on the seed and the file set.

Every file the scan saw is accounted for in the report: kept, skipped by the scan, removed as a
duplicate, left out for a label conflict, or dropped from the official test set.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtune.datasets.dedup import find_groups
from medtune.datasets.records import ImageRecord, ScanResult
from medtune.errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "split", "sha256", "phash", "source", "group")
_LARGE_GROUP = 50  # a near-duplicate group larger than this suggests hashes chaining


@dataclass
class SplitResult:
    """A split manifest and the report explaining it.

    Attributes:
        manifest: one row per kept image, columns :data:`MANIFEST_COLUMNS`, sorted by split,
            then label, then path (plain string order: ``test`` < ``train`` < ``val``).
        report: JSON-serialisable summary (counts, removed files and why, parameters).
    """

    manifest: pd.DataFrame
    report: dict


@dataclass
class _Unit:
    """Images that must share a split: one group, or one ungrouped image."""

    key: str
    label: str
    members: list[int]


def _check_fraction(name: str, value: float, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{name} must be a number, got {value!r}")
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (math.isfinite(value) and low_ok and value < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise DataError(f"{name} must be in {bound}, got {value!r}")
    return value


def _class_rng(seed: int, label: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, zlib.crc32(label.encode("utf-8"))])


def _assign(units: list[_Unit], targets: dict[str, int], splits: tuple[str, ...], rng: np.random.Generator,
            ) -> dict[str, list[_Unit]]:
    """Deal shuffled units to ``splits`` in order until each reaches its target image count.

    The last split in ``splits`` takes the rest. Every split gets at least one unit (the caller
    guarantees there are enough units), and a split overshoots its target by less than one unit.
    """
    order = [units[i] for i in rng.permutation(len(units))]
    out: dict[str, list[_Unit]] = {s: [] for s in splits}
    counts = dict.fromkeys(splits, 0)
    for pos, unit in enumerate(order):
        left_after = len(order) - pos - 1
        chosen = splits[-1]
        for split in splits[:-1]:
            if counts[split] >= targets[split]:
                continue
            still_empty = sum(1 for s in splits if s != split and counts[s] == 0)
            if still_empty <= left_after:
                chosen = split
                break
        out[chosen].append(unit)
        counts[chosen] += len(unit.members)
    return out


def _conflicts(records: list[ImageRecord], groups: list[list[int]]):
    """(group index, members) of every byte-identical set filed under more than one label."""
    for g_index, members in enumerate(groups):
        by_sha: dict[str, list[int]] = {}
        for i in members:
            by_sha.setdefault(records[i].sha256, []).append(i)
        for same in by_sha.values():
            if len({records[i].label for i in same}) > 1:
                yield g_index, same


def make_split(
    scan: ScanResult,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    phash_distance: int = 0,
) -> SplitResult:
    """Split a scanned dataset into train, val and test without leaks.

    Args:
        scan: what the scan found.
        val_fraction: share of each class's training pool (in images) for validation.
        test_fraction: share of each class for testing; ignored (and reported so) when the scan
            has an official test folder.
        seed: seed for the group order; the same seed and file set give the same split.
        phash_distance: largest perceptual-hash Hamming distance that counts as a near
            duplicate; 0 groups byte-identical files only.

    Returns:
        The manifest and its report.

    Raises:
        DataError: a fraction out of range, ``val_fraction + test_fraction >= 1``, no images,
            or a class with too few groups to give every split at least one image.
    """
    official = bool(scan.has_official_test)
    val_fraction = _check_fraction("val_fraction", val_fraction, allow_zero=False)
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=official)
    if not official and val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {seed!r}")
    if not scan.records:
        raise DataError(f"no usable images found in {scan.root}")

    # A canonical order: everything below is independent of the input order.
    records: list[ImageRecord] = sorted(scan.records, key=lambda r: (r.path, r.source, r.label, r.sha256))
    groups = find_groups(records, phash_distance)
    group_of: dict[int, int] = {}
    for g_index, members in enumerate(groups):
        for i in members:
            group_of[i] = g_index
    # Group ids follow the group order, which follows the sorted paths.
    group_ids = [f"g{k:05d}" for k in range(len(groups))]

    # A label conflict is the same file (sha256) filed under two classes: all its copies are left
    # out. Near-duplicates with different labels are only similar-looking images (common between
    # classes of medical images): they stay, kept together in one split, and are reported.
    excluded: set[int] = set()
    conflicted: list[dict] = []
    near_mismatch: list[dict] = []
    for g_index, conflict in _conflicts(records, groups):
        for i in conflict:
            conflicted.append({"path": records[i].path, "label": records[i].label, "group": group_ids[g_index]})
            excluded.add(i)
    for g_index, members in enumerate(groups):
        labels = sorted({records[i].label for i in members if i not in excluded})
        if len(labels) > 1:
            near_mismatch.append({"group": group_ids[g_index], "labels": labels,
                                  "paths": [records[i].path for i in members if i not in excluded]})

    test_dropped: list[dict] = []
    if official:
        for g_index, members in enumerate(groups):
            train_paths = [records[i].path for i in members if records[i].source != "test" and i not in excluded]
            if not train_paths:
                continue
            for i in members:
                if records[i].source == "test" and i not in excluded:
                    exact = [records[j].path for j in members
                             if records[j].source != "test" and records[j].sha256 == records[i].sha256]
                    test_dropped.append({
                        "path": records[i].path, "label": records[i].label,
                        "duplicate_of": (exact or train_paths)[0], "kind": "exact" if exact else "near",
                        "group": group_ids[g_index],
                    })
                    excluded.add(i)

    removed: list[dict] = []
    for g_index, members in enumerate(groups):
        by_sha: dict[str, list[int]] = {}
        for i in members:
            if i not in excluded:
                by_sha.setdefault(records[i].sha256, []).append(i)
        for same in by_sha.values():
            if len(same) < 2:
                continue
            keep = min(same, key=lambda i: (records[i].source != "train", records[i].path))
            for i in same:
                if i != keep:
                    removed.append({"path": records[i].path, "label": records[i].label, "source": records[i].source,
                                    "duplicate_of": records[keep].path, "group": group_ids[g_index]})
                    excluded.add(i)

    # Units: what is left of each group, and every ungrouped image on its own.
    units: list[_Unit] = []
    seen_groups: set[int] = set()
    for i, record in enumerate(records):
        if i in excluded:
            continue
        g_index = group_of.get(i)
        if g_index is None:
            units.append(_Unit(record.path, record.label, [i]))
        elif g_index not in seen_groups:
            seen_groups.add(g_index)
            kept = [j for j in groups[g_index] if j not in excluded]
            units.append(_Unit(records[kept[0]].path, record.label, kept))

    classes = sorted(set(scan.classes) | {r.label for r in records})
    split_of: dict[int, str] = {}
    for label in classes:
        class_units = sorted((u for u in units if u.label == label), key=lambda u: u.key)
        if official:
            pool = [u for u in class_units if records[u.members[0]].source != "test"]
            tests = [u for u in class_units if records[u.members[0]].source == "test"]
            if len(pool) < 2 or not tests:
                raise DataError(
                    f"class {label!r} has {len(pool)} training group(s) and {len(tests)} official test group(s) "
                    "after removing duplicates; need at least 2 and 1 to fill train, val and test")
            n_pool = sum(len(u.members) for u in pool)
            targets = {"val": max(1, round(val_fraction * n_pool))}
            dealt = _assign(pool, targets, ("val", "train"), _class_rng(seed, label))
            dealt["test"] = tests
        else:
            if len(class_units) < 3:
                raise DataError(
                    f"class {label!r} has {len(class_units)} group(s) of images after removing duplicates; "
                    "need at least 3 to fill train, val and test")
            n_pool = sum(len(u.members) for u in class_units)
            targets = {"test": max(1, round(test_fraction * n_pool)), "val": max(1, round(val_fraction * n_pool))}
            dealt = _assign(class_units, targets, ("test", "val", "train"), _class_rng(seed, label))
        for split, split_units in dealt.items():
            for unit in split_units:
                for i in unit.members:
                    split_of[i] = split

    rows = []
    for i, split in split_of.items():
        r = records[i]
        g_index = group_of.get(i)
        rows.append({
            "path": r.path, "label": r.label, "split": split, "sha256": r.sha256, "phash": r.phash,
            "source": r.source, "group": group_ids[g_index] if g_index is not None else "",
        })
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.sort_values(["split", "label", "path"], kind="stable").reset_index(drop=True)

    counts = {s: {c: int(((manifest["split"] == s) & (manifest["label"] == c)).sum()) for c in classes}
              for s in SPLITS}
    totals = {s: int(sum(counts[s].values())) for s in SPLITS}
    skipped = [{"path": s.path, "reason": s.reason} for s in scan.skipped]
    files_seen = len(records) + len(skipped)
    accounted = {
        "files_seen": files_seen,
        "kept": len(manifest),
        "skipped": len(skipped),
        "removed_duplicates": len(removed),
        "conflicted": len(conflicted),
        "test_dropped_duplicates_of_train": len(test_dropped),
    }
    accounted["ok"] = files_seen == sum(v for k, v in accounted.items() if k != "files_seen")
    assert accounted["ok"], f"split bookkeeping lost files: {accounted}"  # a bug, not a user error

    notes = []
    if official:
        notes.append("test_fraction ignored: the dataset has an official test folder, which forms the test split")
    largest = max((len(g) for g in groups), default=0)
    if phash_distance > 0 and largest > _LARGE_GROUP:
        notes.append(f"the largest duplicate group holds {largest} images: phash_distance={phash_distance} may be "
                     "chaining unrelated images together; consider a smaller distance")
        logger.warning(notes[-1])
    report = {
        "classes": classes,
        "counts": counts,
        "totals": totals,
        "skipped": skipped,
        "ignored": {str(k): int(v) for k, v in sorted(scan.ignored.items())},
        "ignored_files": [{"path": s.path, "reason": s.reason} for s in scan.ignored_files],
        "duplicate_groups": {
            "count": len(groups),
            "largest": largest,
            "groups": [{"id": group_ids[k], "paths": [records[i].path for i in g]} for k, g in enumerate(groups)],
        },
        "removed_duplicates": removed,
        "label_conflicts": conflicted,
        "near_duplicate_label_mismatch": near_mismatch,
        "test_dropped_duplicates_of_train": len(test_dropped),
        "test_dropped": test_dropped,
        "has_official_test": official,
        "test_source": "official" if official else "carved",
        "seed": int(seed),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "test_fraction_ignored": official,
        "phash_distance": int(phash_distance),
        "accounted": accounted,
        "notes": notes,
    }
    logger.info(
        "split %d images: train %d, val %d, test %d (%d duplicates removed, %d conflicted, %d test duplicates "
        "of train dropped, %d skipped)", files_seen, totals["train"], totals["val"], totals["test"],
        len(removed), len(conflicted), len(test_dropped), len(skipped))
    return SplitResult(manifest=manifest, report=report)
