"""The phases of :func:`medtune.datasets.splitting.make_split`, each a plain function on records.

Every phase takes the records in their canonical order, the duplicate groups of
:func:`medtune.datasets.dedup.find_duplicates` (lists of record indices) and the indices already left
out by earlier phases. The test leaks and the units take the groups joined with the patients
(:func:`medtune.datasets.patients.join_groups`): one patient's images share a split. The phases that leave records out return ``{record index: report entry}``
in a stable order, so the caller both excludes those records and reports why.
"""

from __future__ import annotations

import zlib
from collections.abc import Container, Sequence
from dataclasses import dataclass, replace

import numpy as np

from medtune.datasets.records import ImageRecord
from medtune.errors import DataError

Groups = Sequence[Sequence[int]]


def group_id(g_index: int) -> str:
    """The id a group has in the manifest and the report (``g00003``): it follows the group order."""
    return f"g{g_index:05d}"


def group_of_records(groups: Groups) -> dict[int, int]:
    """Record index -> index of its group; ungrouped records are absent."""
    return {i: g_index for g_index, members in enumerate(groups) for i in members}


def _by_sha(records: Sequence[ImageRecord], members: Sequence[int], excluded: Container[int] = ()):
    """The members that are not excluded, bucketed by their bytes (sha256), in member order."""
    same: dict[str, list[int]] = {}
    for i in members:
        if i not in excluded:
            same.setdefault(records[i].sha256, []).append(i)
    return same.values()


# ---------------------------------------------------------------- what leaves the split, and why


def find_label_conflicts(records: Sequence[ImageRecord], groups: Groups) -> dict[int, dict]:
    """Every copy of a file (same sha256) filed under more than one class: all of them leave.

    Near duplicates with different labels are only similar-looking images (common between
    classes of medical images): they are not conflicts (see :func:`find_near_label_mismatches`).
    """
    conflicts: dict[int, dict] = {}
    for g_index, members in enumerate(groups):
        for same in _by_sha(records, members):
            if len({records[i].label for i in same}) > 1:
                for i in same:
                    conflicts[i] = {"path": records[i].path, "label": records[i].label, "group": group_id(g_index)}
    return conflicts


def find_near_label_mismatches(records: Sequence[ImageRecord], groups: Groups, excluded: set[int]) -> list[dict]:
    """Groups whose remaining members carry several labels: reported only, they stay together."""
    mismatches = []
    for g_index, members in enumerate(groups):
        kept = [i for i in members if i not in excluded]
        labels = sorted({records[i].label for i in kept})
        if len(labels) > 1:
            mismatches.append({"group": group_id(g_index), "labels": labels, "paths": [records[i].path for i in kept]})
    return mismatches


def find_test_leaks(records: Sequence[ImageRecord], groups: Groups, excluded: set[int]) -> dict[int, dict]:
    """Official test images grouped with a training image: they would leak training data into the test score.

    Each entry names the training file it duplicates (an exact copy if there is one, else the
    group's first training image) and the kind: ``exact``, ``patient`` (the same patient's
    training image) or ``near``.
    """
    leaks: dict[int, dict] = {}
    for g_index, members in enumerate(groups):
        train_paths = [records[i].path for i in members if records[i].source != "test" and i not in excluded]
        if not train_paths:
            continue
        for i in members:
            if records[i].source == "test" and i not in excluded:
                exact = [
                    records[j].path
                    for j in members
                    if records[j].source != "test" and records[j].sha256 == records[i].sha256
                ]
                patient = records[i].patient
                same = [records[j].path for j in members if patient and records[j].source != "test"
                        and records[j].patient == patient]  # fmt: skip
                leaks[i] = {
                    "path": records[i].path,
                    "label": records[i].label,
                    "duplicate_of": (exact or same or train_paths)[0],
                    "kind": "exact" if exact else "patient" if same else "near",
                    "group": group_id(g_index),
                }
    return leaks


def find_exact_duplicates(records: Sequence[ImageRecord], groups: Groups, excluded: set[int]) -> dict[int, dict]:
    """The extra copies of byte-identical files: one representative stays (from ``train`` if
    possible, then the first path), every other copy leaves."""
    duplicates: dict[int, dict] = {}
    for g_index, members in enumerate(groups):
        for same in _by_sha(records, members, excluded):
            keep = min(same, key=lambda i: (records[i].source != "train", records[i].path))
            for i in same:
                if i != keep:
                    duplicates[i] = {
                        "path": records[i].path,
                        "label": records[i].label,
                        "source": records[i].source,
                        "duplicate_of": records[keep].path,
                        "group": group_id(g_index),
                    }
    return duplicates


# ---------------------------------------------------------------- grouping and assignment


@dataclass
class Unit:
    """Images that must share a split: what is left of one group (or patient), or one image.

    Attributes:
        key: the path of its first image; units are dealt in an order sorted by it.
        label: the label of its first image (near-duplicate members may carry others).
        members: record indices.
        given: the split given to it, set by :func:`deal_class`: ``test`` (an official test
            image), ``val``, ``train`` (train or val, never test) or ``""`` (any); a labels
            table's ``val`` outranks its ``train``.
    """

    key: str
    label: str
    members: list[int]
    given: str = ""


def _given(records: Sequence[ImageRecord], members: Sequence[int]) -> str:
    if any(records[i].source == "test" for i in members):
        return "test"
    splits = {records[i].split for i in members}
    return "val" if "val" in splits else "train" if "train" in splits else ""


def make_units(records: Sequence[ImageRecord], groups: Groups, excluded: set[int]) -> list[Unit]:
    """The remaining records as units, in record order: each group once, each ungrouped image alone."""
    group_of = group_of_records(groups)
    units: list[Unit] = []
    seen_groups: set[int] = set()
    for i, record in enumerate(records):
        if i in excluded:
            continue
        g_index = group_of.get(i)
        if g_index is None:
            units.append(Unit(record.path, record.label, [i]))
        elif g_index not in seen_groups:
            seen_groups.add(g_index)
            kept = [j for j in groups[g_index] if j not in excluded]
            units.append(Unit(records[kept[0]].path, record.label, kept))
    return units


def class_rng(seed: int, label: str) -> np.random.Generator:
    """The random order of one class: depends on the seed and the class name only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, zlib.crc32(label.encode("utf-8"))])


def deal(
    units: list[Unit],
    targets: dict[str, int],
    splits: tuple[str, ...],
    rng: np.random.Generator,
) -> dict[str, list[Unit]]:
    """Deal shuffled units to ``splits`` in order until each reaches its target image count.

    The last split in ``splits`` takes the rest. Every split gets at least one unit (the caller
    guarantees there are enough units), and a split overshoots its target by less than one unit.
    A unit given ``train`` is never dealt to ``test``.
    """
    order = [units[i] for i in rng.permutation(len(units))]
    out: dict[str, list[Unit]] = {s: [] for s in splits}
    counts = dict.fromkeys(splits, 0)
    for pos, unit in enumerate(order):
        left_after = len(order) - pos - 1
        chosen = splits[-1]
        for split in splits[:-1]:
            if counts[split] >= targets[split] or (split == "test" and unit.given == "train"):
                continue
            still_empty = sum(1 for s in splits if s != split and counts[s] == 0)
            if still_empty <= left_after:
                chosen = split
                break
        out[chosen].append(unit)
        counts[chosen] += len(unit.members)
    return out


def _images(units: list[Unit]) -> int:
    return sum(len(u.members) for u in units)


def _too_few(label: str, pool: list[Unit], given: dict[str, list[Unit]], splits: tuple[str, ...]) -> DataError:
    kinds = {"test": "official test", "val": "given val"}
    word = "training group(s)" if "test" in given else "group(s) of images"
    has = " and ".join([f"{len(pool)} {word}", *(f"{len(u)} {kinds[s]} group(s)" for s, u in given.items())])
    need = " and ".join([str(len(splits)), *("1" for _ in given)])
    return DataError(
        f"class {label!r} has {has} after removing duplicates, label conflicts and test leaks; need at least "
        f"{need} to fill train, val and test (or leave it out: exclude_classes={label!r})"
    )


def deal_class(
    records: Sequence[ImageRecord],
    class_units: list[Unit],
    label: str,
    *,
    official: bool,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    val_given: bool = False,
) -> dict[str, list[Unit]]:
    """One class's units (sorted by key) dealt to train, val and test.

    With an official test folder (or ``test`` rows in a labels table) its test units form the
    test split, otherwise test is carved from the units given no split. Likewise with ``val``
    rows (``val_given``) the units given ``val`` form the validation split, otherwise val is
    carved from the units given no split or ``train``. Test's target is a share of the class,
    val's a share of what is not test.

    Raises:
        DataError: too few units to give every split at least one.
    """
    class_units = [replace(u, given=_given(records, u.members)) for u in class_units]
    given = {s: [u for u in class_units if u.given == s] for s, on in (("test", official), ("val", val_given)) if on}
    pool = [u for u in class_units if u.given in ("", "train")]
    splits = (*(() if official else ("test",)), *(() if val_given else ("val",)), "train")
    if len(pool) < len(splits) or not all(given.values()):
        raise _too_few(label, pool, given, splits)
    not_test = [u for u in class_units if u.given != "test"]
    targets = {
        "test": max(1, round(test_fraction * _images(class_units))),
        "val": max(1, round(val_fraction * _images(not_test))),
    }
    dealt = deal(pool, targets, splits, class_rng(seed, label))
    if not dealt.get("test", given.get("test")):
        free = sum(1 for u in pool if u.given == "")
        raise DataError(
            f"class {label!r}: no image left for test ({free} group(s) given no split; the labels table's "
            "train rows never go to test): give some rows split=test or leave their split empty"
        )
    dealt.update(given)
    return dealt


def assign_splits(
    records: Sequence[ImageRecord],
    units: list[Unit],
    classes: Sequence[str],
    *,
    official: bool,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[int, str]:
    """Record index -> split, class by class (see :func:`deal_class`).

    A class whose every image rides in units of other classes (each patient's first image is of
    another class) has no units of its own: its images go where their units go.
    """
    val_given = any(records[i].split == "val" for u in units for i in u.members)
    in_units = {records[i].label for u in units for i in u.members}
    split_of: dict[int, str] = {}
    for label in classes:
        class_units = sorted((u for u in units if u.label == label), key=lambda u: u.key)
        if not class_units and label in in_units:
            continue
        dealt = deal_class(
            records,
            class_units,
            label,
            official=official,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            val_given=val_given,
        )
        for split, split_units in dealt.items():
            for unit in split_units:
                for i in unit.members:
                    split_of[i] = split
    return split_of
