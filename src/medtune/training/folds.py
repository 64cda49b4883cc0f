"""k-fold cross-validation for final training on small datasets (nnU-Net's five folds).

The training and validation images are pooled and cut into ``k`` folds, stratified by class and
grouped (a duplicate group or a patient never straddles two folds). Member ``i`` trains on the
other folds and stops early on fold ``i``; its predictions on fold ``i`` are out of fold: every
pooled image is predicted once by a member that never saw it. Those out-of-fold predictions
choose the test-time flip and fit the temperature and the prediction sets, on all the pooled
images instead of a validation split too small to read. The test split plays no part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtune.errors import DataError

SPLITS = ("train", "val")  # pooled in this order, each in its cache's row order


@dataclass
class FoldData:
    """The arrays one member sees, shaped like a cache (``x`` and ``y`` per ``train`` / ``val``)."""

    x: dict
    y: dict


def pool_groups(manifest) -> np.ndarray:
    """A group number per pooled row (the cache's train rows, then its val rows): rows that share a
    duplicate group or a patient share a number."""
    from medtune.datasets.cache import split_rows

    in_cache_order = split_rows(manifest)
    rows = [in_cache_order[s] for s in SPLITS if s in in_cache_order]
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys = []
    for part in rows:
        blank = [""] * len(part)  # a manifest logged before patients (or groups) were recorded
        for path, group, patient in zip(part["path"], part.get("group", blank), part.get("patient", blank)):
            linked = [f"g:{group}" if group else f"f:{path}", *([f"p:{patient}"] if patient else [])]
            for other in linked[1:]:
                parent[find(other)] = find(linked[0])
            keys.append(linked[0])
    roots = [find(k) for k in keys]
    number = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return np.array([number[r] for r in roots], dtype=np.int64)


def assign_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each row: stratified by ``y``, a group in one fold, the same for the same seed."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    smallest = int(np.bincount(y).min(initial=len(y))) if len(y) else 0
    if len(np.unique(groups)) < k or smallest < 2:
        raise DataError(f"folds={k}: {len(y)} images in {len(np.unique(groups))} groups cannot fill {k} folds")
    fold = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, held_out) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        fold[held_out] = i
    return fold


def fold_data(x: np.ndarray, y: np.ndarray, fold: np.ndarray, i: int) -> FoldData:
    """Member ``i``'s arrays: the other folds to train on, fold ``i`` to stop on."""
    held_out = fold == i
    return FoldData(x={"train": x[~held_out], "val": x[held_out]}, y={"train": y[~held_out], "val": y[held_out]})


def pooled(cache) -> tuple[np.ndarray, np.ndarray]:
    """The cache's training and validation images and labels, pooled (train rows first)."""
    return np.concatenate([cache.x[s] for s in SPLITS]), np.concatenate([cache.y[s] for s in SPLITS])
