"""Find exact and near-duplicate images among scanned records.

Exact duplicates share the SHA-256 of their bytes. Near duplicates (the same picture re-encoded,
resized or lightly edited) have 64-bit perceptual hashes within a small Hamming distance. Both
are joined transitively (union-find), so a chain A~B~C forms one group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from medtune.datasets.records import ImageRecord
from medtune.errors import DataError

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 4_000_000  # pairwise XORs per block: 32 MB of uint64


class _UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def _phash_values(records: Sequence[ImageRecord]) -> np.ndarray:
    values = np.empty(len(records), dtype=np.uint64)
    for i, record in enumerate(records):
        text = record.phash
        if not isinstance(text, str) or len(text) != 16:
            raise DataError(f"find_groups: record {record.path} has phash {text!r}, expected 16 hex digits")
        try:
            values[i] = int(text, 16)
        except ValueError as exc:
            raise DataError(f"find_groups: record {record.path} has phash {text!r}, expected 16 hex digits") from exc
    return values


def _near_pairs(values: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of distinct values within ``max_distance`` bits.

    Compares each value with all later ones in row blocks, so memory stays bounded.
    """
    n = len(values)
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        # Columns from `start` on: the block's upper triangle plus everything after it.
        block = values[start:stop, None] ^ values[None, start:]
        close = np.bitwise_count(block) <= max_distance
        i, j = np.nonzero(close)
        i = i + start
        j = j + start
        keep = j > i
        left.append(i[keep])
        right.append(j[keep])
    if not left:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(left), np.concatenate(right)


def find_groups(records: Sequence[ImageRecord], phash_distance: int = 0) -> list[list[int]]:
    """Group duplicate records.

    Args:
        records: the scanned images.
        phash_distance: the largest Hamming distance (0..64) between two perceptual hashes that
            still counts as a near duplicate; 0 looks for byte-identical files only.

    Returns:
        Groups of at least two record indices, each sorted ascending, the groups ordered by their
        first index. Records in no group are left out.

    Raises:
        DataError: ``phash_distance`` out of range, or a record's phash is not 16 hex digits.
    """
    if (
        isinstance(phash_distance, bool)
        or not isinstance(phash_distance, (int, np.integer))
        or not (0 <= phash_distance <= 64)
    ):
        raise DataError(f"phash_distance must be an integer from 0 to 64, got {phash_distance!r}")
    n = len(records)
    uf = _UnionFind(n)

    first_by_sha: dict[str, int] = {}
    for i, record in enumerate(records):
        first = first_by_sha.setdefault(record.sha256, i)
        if first != i:
            uf.union(first, i)

    if phash_distance > 0 and n > 1:
        values = _phash_values(records)
        unique, representative, inverse = np.unique(values, return_index=True, return_inverse=True)
        # Records sharing one hash value are at distance 0 from each other; `representative`
        # (the first record holding each value) stands for them in the pairwise comparisons.
        for i, u in enumerate(inverse.tolist()):
            first = int(representative[u])
            if first != i:
                uf.union(first, i)
        a, b = _near_pairs(unique, int(phash_distance))
        for i, j in zip(representative[a].tolist(), representative[b].tolist()):
            uf.union(i, j)
        logger.debug("find_groups: %d records, %d distinct phashes, %d near pairs", n, len(unique), len(a))

    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    groups = sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])
    logger.debug("find_groups: %d groups holding %d records", len(groups), sum(map(len, groups)))
    return groups


def label_conflicts(records: Sequence[ImageRecord], groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """The groups whose members carry more than one label.

    Args:
        records: the records the group indices refer to.
        groups: groups as returned by :func:`find_groups`.

    Returns:
        The conflicting groups, as lists, in the given order.
    """
    return [list(g) for g in groups if len({records[i].label for i in g}) > 1]
