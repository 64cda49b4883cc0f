"""Find exact and near-duplicate images among scanned records.

Exact duplicates share the SHA-256 of their bytes. Near duplicates (the same picture re-encoded,
resized or lightly edited) are found in two steps: their 64-bit perceptual hashes lie within a
small Hamming distance (the candidates), and their pixels agree (the confirmation): both files
are read again, shrunk to 16x16 grey, normalised for brightness and contrast, and their mean
absolute difference must stay under :func:`pixel_threshold` (stricter for small images). Only
confirmed pairs join a group; groups are transitive (union-find), so A~B~C forms one group.

The hash alone is not enough: on homogeneous sets (28 px thumbnails of one modality) a quarter
of all images can have another within 4 bits. Candidates are read again rather than kept as
thumbnails by the scan: only the candidates' files are decoded, and the scan index stays as it is
(docs/performance.md, "Near duplicates", has the measurements).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medtune.datasets import images
from medtune.datasets.records import ImageRecord
from medtune.errors import DataError

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 4_000_000  # pairwise XORs per block: 32 MB of uint64
THUMB_SIDE = 16  # pixels per side of the thumbnails compared
# The largest normalised difference that confirms a pair, measured by bench/near_duplicates.py on
# three real sets at native size, 64 and 28 px (docs/performance.md, "Near duplicates"): copies
# (JPEG q75, resized 4 %, brightness x1.05) differ by up to ~0.07 at 64 px and more, where distinct
# images rarely come this close (<5 % of the brain MRI candidates, the next slice of one scan).
# Under 64 px a resampled or re-encoded copy differs by 0.1-0.2, as much as that next slice does,
# so there only nearly identical pixels count: a stricter limit, and small copies that went
# through resampling stay apart (a missed copy costs a little leak; a false one drops a test image).
PIXEL_LIMIT = 0.06
SMALL_SIDE = 64
SMALL_PIXEL_LIMIT = 0.05


@dataclass
class Duplicates:
    """The duplicate groups and how the near pairs were decided.

    Attributes:
        groups: groups of at least two record indices, each sorted, ordered by first index.
        candidate_pairs: record pairs of different bytes whose hashes are within the distance.
        confirmed_pairs: the candidates whose pixels agree; only these group images.
    """

    groups: list[list[int]]
    candidate_pairs: int = 0
    confirmed_pairs: int = 0


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
            raise DataError(f"find_duplicates: record {record.path} has phash {text!r}, expected 16 hex digits")
        try:
            values[i] = int(text, 16)
        except ValueError as exc:
            raise DataError(
                f"find_duplicates: record {record.path} has phash {text!r}, expected 16 hex digits"
            ) from exc
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


def candidate_pairs(records: Sequence[ImageRecord], max_distance: int) -> np.ndarray:
    """Record pairs ``(i, j)``, ``i < j``, whose hashes are within ``max_distance`` bits.

    One record stands for all copies of its bytes (the first), so every pair has different bytes.

    Returns:
        An ``(n, 2)`` int64 array, sorted by ``i`` then ``j``.
    """
    first_by_sha: dict[str, int] = {}
    for i, record in enumerate(records):
        first_by_sha.setdefault(record.sha256, i)
    reps = np.array(sorted(first_by_sha.values()), dtype=np.int64)
    values = _phash_values([records[i] for i in reps])
    unique, inverse = np.unique(values, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # reps grouped by hash value
    starts = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
    members = [reps[order[starts[u] : starts[u + 1]]] for u in range(len(unique))]
    a, b = _near_pairs(unique, max_distance)
    blocks = [np.array(np.triu_indices(len(m), 1)).T.reshape(-1, 2) for m in members]
    blocks = [m[t] for m, t in zip(members, blocks)]  # one hash value: distance 0
    blocks += [np.array(np.meshgrid(members[u], members[v])).reshape(2, -1).T for u, v in zip(a.tolist(), b.tolist())]
    if not blocks:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(blocks).reshape(-1, 2), axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def thumbnail(path: str) -> np.ndarray | None:
    """The file as a 16x16 grey image normalised to zero mean and unit deviation; ``None`` if unreadable."""
    try:
        with open(path, "rb") as fh:
            img = images.open_bytes(fh.read(), path, draft_size=4 * THUMB_SIDE)
        grey = images.convert_mode(img, 1).resize((THUMB_SIDE, THUMB_SIDE), Image.BOX)
    except (OSError, images.ImageDecodeError) as exc:
        logger.warning("near-duplicate check: %s unreadable (%s); its pairs are not confirmed", path, exc)
        return None
    a = np.asarray(grey, dtype=np.float32).ravel()
    a = a - a.mean()
    sd = float(a.std())
    return a / sd if sd > 1e-3 else a


def pixel_threshold(side: int) -> float:
    """The largest normalised difference that confirms a pair whose smaller image is ``side`` px."""
    return SMALL_PIXEL_LIMIT if side < SMALL_SIDE else PIXEL_LIMIT


def pixel_distances(records: Sequence[ImageRecord], pairs: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each pair's normalised thumbnails; ``inf`` where a file is unreadable."""
    thumbs: dict[int, np.ndarray | None] = {}
    out = np.full(len(pairs), np.inf, dtype=np.float32)
    for k, (i, j) in enumerate(pairs.tolist()):
        for m in (i, j):
            if m not in thumbs:
                thumbs[m] = thumbnail(records[m].path)
        a, b = thumbs[i], thumbs[j]
        if a is not None and b is not None:
            out[k] = float(np.abs(a - b).mean())
    return out


def near_rule() -> str:
    """The confirmation rule in words, for the split report."""
    return (
        f"hash within phash_distance bits, then the mean absolute difference of the two images as "
        f"{THUMB_SIDE}x{THUMB_SIDE} grey, normalised for brightness and contrast, at most {PIXEL_LIMIT:g} "
        f"({SMALL_PIXEL_LIMIT:g} when the smaller image's shorter side is under {SMALL_SIDE} px)"
    )


def confirm_pairs(records: Sequence[ImageRecord], pairs: np.ndarray) -> np.ndarray:
    """Which candidate pairs agree on pixels, as a boolean mask (see :func:`pixel_threshold`)."""
    if not len(pairs):
        return np.zeros(0, dtype=bool)
    sides = np.array([min(r.width, r.height) for r in records])
    limits = np.array([pixel_threshold(s) for s in np.minimum(sides[pairs[:, 0]], sides[pairs[:, 1]])])
    return pixel_distances(records, pairs) <= limits


def find_duplicates(records: Sequence[ImageRecord], phash_distance: int = 0) -> Duplicates:
    """Group duplicate records: the same bytes, or near-duplicate candidates confirmed on pixels.

    Args:
        records: the scanned images (their files are read again for the candidate pairs).
        phash_distance: the largest Hamming distance (0..64) between two perceptual hashes that
            makes a candidate pair; 0 looks for byte-identical files only.

    Returns:
        The groups and the candidate and confirmed pair counts.

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

    found = Duplicates([])
    if phash_distance > 0 and n > 1:
        pairs = candidate_pairs(records, int(phash_distance))
        confirmed = pairs[confirm_pairs(records, pairs)]
        for i, j in confirmed.tolist():
            uf.union(i, j)
        found = Duplicates([], len(pairs), len(confirmed))
        logger.info(
            "near duplicates: %d candidate pairs within %d hash bits, %d confirmed on pixels",
            len(pairs), phash_distance, len(confirmed),
        )  # fmt: skip

    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    found.groups = sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])
    logger.debug("find_duplicates: %d groups holding %d records", len(found.groups), sum(map(len, found.groups)))
    return found


def label_conflicts(records: Sequence[ImageRecord], groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """The groups whose members carry more than one label.

    Args:
        records: the records the group indices refer to.
        groups: groups as returned by :func:`find_duplicates`.

    Returns:
        The conflicting groups, as lists, in the given order.
    """
    return [list(g) for g in groups if len({records[i].label for i in g}) > 1]
