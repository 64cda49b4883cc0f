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
   A patient's images (:mod:`medtune.datasets.patients`) join one group with their duplicates:
   no patient straddles two splits, and an official test image of a training patient is dropped
   as a leak. Splits a labels table gives are kept (see :func:`~medtune.datasets.split_phases.deal_class`).

Every file the scan saw is accounted for in the report: kept, skipped by the scan, removed as a
duplicate, left out for a label conflict, or dropped from the official test set.

:func:`make_split` runs the phases in that order: :func:`check_parameters`, grouping
(:func:`~medtune.datasets.dedup.find_duplicates`), :func:`find_removals` (rules 1 to 3, in
:mod:`medtune.datasets.split_phases`), units and assignment (rule 4, same module),
:func:`build_manifest`, :func:`account_for_files` and :func:`build_report`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtune.datasets.dedup import find_duplicates, near_rule
from medtune.datasets.patients import join_groups, patient_groups, patient_summary
from medtune.datasets.records import ImageRecord, ScanResult
from medtune.datasets.split_phases import (
    Groups,
    assign_splits,
    find_exact_duplicates,
    find_label_conflicts,
    find_near_label_mismatches,
    find_test_leaks,
    group_id,
    group_of_records,
    make_units,
)
from medtune.errors import DataError, InternalError
from medtune.options import default

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "split", "sha256", "phash", "source", "group", "patient")
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
class Removals:
    """The records each phase left out, ``{record index: report entry}``, and the lookalikes it reported."""

    conflicted: dict[int, dict]
    near_mismatch: list[dict]
    test_dropped: dict[int, dict]
    removed: dict[int, dict]

    @property
    def excluded(self) -> set[int]:
        return {*self.conflicted, *self.test_dropped, *self.removed}


def _check_fraction(name: str, value: float, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{name} must be a number, got {value!r}")
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (math.isfinite(value) and low_ok and value < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise DataError(f"{name} must be in {bound}, got {value!r}")
    return value


def check_parameters(scan: ScanResult, val_fraction: float, test_fraction: float, seed: int) -> tuple[float, float]:
    """The two fractions as floats, after checking every parameter and that there are images.

    Raises:
        DataError: naming the parameter at fault, or the folder without usable images.
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
    return val_fraction, test_fraction


def find_removals(
    records: Sequence[ImageRecord], groups: Groups, official: bool, joined: Groups | None = None
) -> Removals:
    """Label conflicts, then (with an official test folder) test leaks, then extra exact copies.

    ``joined``: the duplicate groups joined with the patients, for the test leaks (default ``groups``).
    """
    conflicted = find_label_conflicts(records, groups)
    excluded = set(conflicted)
    near_mismatch = find_near_label_mismatches(records, groups, excluded)
    test_dropped = find_test_leaks(records, groups if joined is None else joined, excluded) if official else {}
    excluded |= set(test_dropped)
    removed = find_exact_duplicates(records, groups, excluded)
    return Removals(conflicted, near_mismatch, test_dropped, removed)


def build_manifest(records: Sequence[ImageRecord], groups: Groups, split_of: dict[int, str]) -> pd.DataFrame:
    """One row per assigned record, columns :data:`MANIFEST_COLUMNS`, sorted by split, label, path."""
    group_of = group_of_records(groups)
    rows = []
    for i, split in split_of.items():
        r = records[i]
        g_index = group_of.get(i)
        rows.append(
            {
                "path": r.path,
                "label": r.label,
                "split": split,
                "sha256": r.sha256,
                "phash": r.phash,
                "source": r.source,
                "group": group_id(g_index) if g_index is not None else "",
                "patient": r.patient,
            }
        )
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return manifest.sort_values(["split", "label", "path"], kind="stable").reset_index(drop=True)


def account_for_files(n_records: int, n_skipped: int, n_kept: int, removals: Removals) -> dict:
    """Where every file the scan saw went; ``ok`` says the counts add up.

    Raises:
        InternalError: a file was lost or counted twice (a bug in medtune, not in the data).
    """
    accounted = {
        "files_seen": n_records + n_skipped,
        "kept": n_kept,
        "skipped": n_skipped,
        "removed_duplicates": len(removals.removed),
        "conflicted": len(removals.conflicted),
        "test_dropped_duplicates_of_train": len(removals.test_dropped),
    }
    accounted["ok"] = accounted["files_seen"] == sum(v for k, v in accounted.items() if k != "files_seen")
    if not accounted["ok"]:
        raise InternalError(f"split bookkeeping lost files (a bug in medtune, please report it): {accounted}")
    return accounted


def build_report(
    scan: ScanResult,
    records: Sequence[ImageRecord],
    groups: Groups,
    manifest: pd.DataFrame,
    removals: Removals,
    accounted: dict,
    *,
    classes: list[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    phash_distance: int,
    near_pairs: tuple[int, int] = (0, 0),
) -> dict:
    """The JSON-serialisable report of a split: counts, every file left out and why, the parameters.

    ``near_pairs``: the near-duplicate candidate pairs and how many of them were confirmed on pixels.
    """
    official = bool(scan.has_official_test)
    val_given = any(r.split == "val" for r in records)
    counts = {s: {c: int(((manifest["split"] == s) & (manifest["label"] == c)).sum()) for c in classes} for s in SPLITS}
    notes = []
    if official:
        notes.append(
            "test_fraction ignored: the dataset has an official test folder (or test rows in its labels "
            "table), which forms the test split"
        )
    if val_given:
        notes.append("val_fraction ignored: the labels table's val rows form the validation split")
    patients = patient_summary(manifest, classes)
    for d in patients["dominant"]:
        notes.append(
            f"one patient (key {d['patient']}) holds {d['images']} of the {d['label']!r} images "
            f"({d['share']:.0%}, more than {patients['max_share']:.0%}): that class's scores rest on few patients"
        )
        logger.warning(notes[-1])
    largest = max((len(g) for g in groups), default=0)
    if phash_distance > 0 and largest > _LARGE_GROUP:
        notes.append(
            f"the largest duplicate group holds {largest} images: phash_distance={phash_distance} may be "
            "chaining unrelated images together; consider a smaller distance"
        )
        logger.warning(notes[-1])
    return {
        "classes": classes,
        "counts": counts,
        "totals": {s: int(sum(counts[s].values())) for s in SPLITS},
        "skipped": [{"path": s.path, "reason": s.reason} for s in scan.skipped],
        "ignored": {str(k): int(v) for k, v in sorted(scan.ignored.items())},
        "ignored_files": [{"path": s.path, "reason": s.reason} for s in scan.ignored_files],
        "duplicate_groups": {
            "count": len(groups),
            "largest": largest,
            "groups": [{"id": group_id(k), "paths": [records[i].path for i in g]} for k, g in enumerate(groups)],
        },
        "removed_duplicates": list(removals.removed.values()),
        "label_conflicts": list(removals.conflicted.values()),
        "near_duplicate_label_mismatch": removals.near_mismatch,
        "near_duplicate_pairs": {
            "candidates": int(near_pairs[0]),
            "confirmed": int(near_pairs[1]),
            "rule": near_rule(),
        },
        "test_dropped_duplicates_of_train": len(removals.test_dropped),
        "test_dropped": list(removals.test_dropped.values()),
        "has_official_test": official,
        "test_source": "official" if official else "carved",
        "val_source": "given" if val_given else "carved",
        "patients": patients,
        "seed": int(seed),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "test_fraction_ignored": official,
        "phash_distance": int(phash_distance),
        "accounted": accounted,
        "notes": notes,
    }


def make_split(
    scan: ScanResult,
    *,
    val_fraction: float = default("val_fraction"),
    test_fraction: float = default("test_fraction"),
    seed: int = default("seed"),
    phash_distance: int = 0,
) -> SplitResult:
    """Split a scanned dataset into train, val and test without leaks.

    Args:
        scan: what the scan found.
        val_fraction: share of each class's training pool (in images) for validation.
        test_fraction: share of each class for testing; ignored (and reported so) when the scan
            has an official test folder.
        seed: seed for the group order; the same seed and file set give the same split.
        phash_distance: largest perceptual-hash Hamming distance that makes a near-duplicate
            candidate (confirmed on pixels before it groups); 0 groups byte-identical files only.

    Returns:
        The manifest and its report.

    Raises:
        DataError: a fraction out of range, ``val_fraction + test_fraction >= 1``, no images,
            or a class with too few groups to give every split at least one image.
    """
    val_fraction, test_fraction = check_parameters(scan, val_fraction, test_fraction, seed)
    official = bool(scan.has_official_test)
    # A canonical order: everything below is independent of the input order.
    records: list[ImageRecord] = sorted(scan.records, key=lambda r: (r.path, r.source, r.label, r.sha256))
    duplicates = find_duplicates(records, phash_distance)
    groups = duplicates.groups  # group ids follow the record order, which follows the paths
    joined = join_groups(len(records), groups, patient_groups(records))  # a patient's images stay together

    removals = find_removals(records, groups, official, joined)
    units = make_units(records, joined, removals.excluded)
    classes = sorted(set(scan.classes) | {r.label for r in records})
    split_of = assign_splits(
        records, units, classes, official=official, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    manifest = build_manifest(records, groups, split_of)

    accounted = account_for_files(len(records), len(scan.skipped), len(manifest), removals)
    report = build_report(
        scan,
        records,
        groups,
        manifest,
        removals,
        accounted,
        classes=classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        phash_distance=phash_distance,
        near_pairs=(duplicates.candidate_pairs, duplicates.confirmed_pairs),
    )
    if report["patients"]["straddling"]:
        raise InternalError(f"{report['patients']['straddling']} patient(s) straddle two splits (a bug in medtune)")
    totals = report["totals"]
    logger.info(
        "split %d images: train %d, val %d, test %d (%d duplicates removed, %d conflicted, %d test duplicates "
        "of train dropped, %d skipped; %d of %d near-duplicate candidate pairs confirmed on pixels)",
        accounted["files_seen"],
        totals["train"],
        totals["val"],
        totals["test"],
        len(removals.removed),
        len(removals.conflicted),
        len(removals.test_dropped),
        len(scan.skipped),
        duplicates.confirmed_pairs,
        duplicates.candidate_pairs,
    )
    return SplitResult(manifest=manifest, report=report)
