"""Decoded images per split, cached on disk as memory-mapped ``.npy`` files.

A cache lives in ``<root>/arrays/<key>/``, where the key hashes the manifest's contents (file
SHA-256, label and split of every row), the class order, the image size, the channel count and a
DICOM window when one is given (:mod:`medtune.datasets.dicom`). Moving a dataset folder therefore
reuses its cache; changing a file, a label, a split, the class list, the size or the window builds
a new one. Inside: ``{split}_x.npy`` (uint8, N x size x size x channels),
``{split}_y.npy`` (int32 class indices) and ``meta.json``. Rows within a split are ordered by
(label, sha256, path), so the arrays are a function of the key alone.

A cache is built in a temporary sibling folder and renamed into place when complete, so an
interrupted build never leaves a half cache behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medtune import settings
from medtune.errors import DataError

CHANNELS = 3  # the cache keeps every image as RGB

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
"""Part of every key: bump it when the layout or the default decoding changes."""

_SPLIT_ORDER = ("train", "val", "test")
_DECODE_CHUNK_BYTES = 256 * 2**20  # decoded pixels handed over per decode() call
_REQUIRED_COLUMNS = ("path", "label", "split", "sha256")

Decoder = Callable[[list[str], int, int], np.ndarray]


@dataclass
class CachedSplits:
    """Decoded arrays of every split of a manifest.

    Attributes:
        path: the cache folder.
        classes: class names; ``y`` holds indices into this list.
        image_size: height and width of every image.
        channels: 1 or 3.
        x: per split, uint8 ``(N, image_size, image_size, channels)``, memory-mapped read-only.
        y: per split, int32 ``(N,)`` class indices.
        paths: per split, the source file of each row.
    """

    path: Path
    classes: list[str]
    image_size: int
    channels: int
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    paths: dict[str, list[str]]

    @property
    def key(self) -> str:
        """The cache key (the folder name)."""
        return self.path.name

    @property
    def splits(self) -> list[str]:
        """The splits present, train/val/test first."""
        return list(self.x)


def _check_manifest(manifest: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {', '.join(missing)}")


def manifest_hash(manifest: pd.DataFrame) -> str:
    """A digest of what a manifest holds, independent of paths and row order.

    Args:
        manifest: a split manifest (columns ``sha256``, ``label``, ``split`` at least).

    Returns:
        16 hex digits of the SHA-256 of the sorted ``(sha256, label, split)`` triples.
    """
    _check_manifest(manifest)
    triples = sorted(zip(manifest["sha256"].astype(str), manifest["label"].astype(str), manifest["split"].astype(str)))
    digest = hashlib.sha256()
    for triple in triples:
        digest.update(("\t".join(triple) + "\n").encode("utf-8"))
    return digest.hexdigest()[:16]


def cache_key(
    manifest: pd.DataFrame,
    image_size: int,
    channels: int,
    classes: Sequence[str] | None = None,
    window: str | None = None,
) -> str:
    """The folder name of a manifest's cache.

    Args:
        manifest: a split manifest.
        image_size: height and width of the decoded images.
        channels: 1 or 3.
        classes: the class order ``y`` indexes into; default: the manifest's labels, sorted.
        window: the DICOM window ``center,width`` the images are decoded with; None (each file's
            own) leaves the key as it was before windows existed.

    Returns:
        A file-name-safe key such as ``"64px3c-0123456789abcdef"``.
    """
    from medtune.datasets.dicom import parse_window, window_label

    if classes is None:
        classes = sorted(set(manifest["label"].astype(str)))
    fields = {
        "format": CACHE_FORMAT_VERSION,
        "manifest": manifest_hash(manifest),
        "classes": list(map(str, classes)),
        "image_size": int(image_size),
        "channels": int(channels),
    }
    if parse_window(window) is not None:
        fields["window"] = window_label(window)
    digest = hashlib.sha256()
    digest.update(json.dumps(fields, sort_keys=True).encode("utf-8"))
    return f"{int(image_size)}px{int(channels)}c-{digest.hexdigest()[:16]}"


def split_rows(manifest: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows per split in the cache's order: splits in train/val/test order first, rows by (label, sha256, path)."""
    frame = manifest.astype(str)
    names = [s for s in _SPLIT_ORDER if (frame["split"] == s).any()]
    names += sorted(set(frame["split"]) - set(_SPLIT_ORDER))
    return {
        s: frame[frame["split"] == s].sort_values(["label", "sha256", "path"], kind="stable").reset_index(drop=True)
        for s in names
    }


def _default_decode(paths: list[str], size: int, channels: int, window: str | None = None) -> np.ndarray:
    from medtune.datasets.images import decode_many  # lazy: written separately, pulls in Pillow work
    from medtune.progress import Counter

    with Counter(f"building the {size} px array cache", len(paths), "image") as bar:
        return decode_many(paths, size, channels, progress=bar.to, window=window)


def load_cache(path: Path) -> CachedSplits:
    """Open a cache folder written by :func:`ensure_cache`.

    Args:
        path: the cache folder (``<root>/arrays/<key>``).

    Returns:
        The cached splits, ``x`` memory-mapped read-only.

    Raises:
        DataError: the folder is missing or incomplete.
    """
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        size, channels = int(meta["image_size"]), int(meta["channels"])
        x, y, paths = {}, {}, {}
        for split in meta["splits"]:
            x[split] = np.load(path / f"{split}_x.npy", mmap_mode="r", allow_pickle=False)
            y[split] = np.load(path / f"{split}_y.npy", allow_pickle=False)
            paths[split] = list(meta["paths"][split])
            n = len(paths[split])
            if x[split].shape != (n, size, size, channels) or x[split].dtype != np.uint8 or y[split].shape != (n,):
                raise ValueError(f"split {split!r} arrays do not match meta.json")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cache {path} is missing or incomplete: {exc}") from exc
    return CachedSplits(
        path=path, classes=list(meta["classes"]), image_size=size, channels=channels, x=x, y=y, paths=paths
    )


def _build_prefix(key: str) -> str:
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:32]
    return f".{key}.tmp-{host}-"


def _remove_stale_builds(arrays_dir: Path, key: str) -> None:
    """Delete temporary folders left by builds of ``key`` killed on this host."""
    prefix = _build_prefix(key)
    for entry in arrays_dir.glob(f"{prefix}*"):
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            logger.info("removing interrupted cache build %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass  # alive under another user, or unknown: leave it


def _unwritable(folder: Path, exc: OSError) -> DataError:
    why = exc.strerror or type(exc).__name__
    return DataError(
        f"array cache folder {folder}: cannot write the cache ({why}); free space there or point "
        "MEDTUNE_CACHE_DIR at a writable folder (nothing half-written was kept)"
    )


def _fill_split(
    target: Path, rows: pd.DataFrame, image_size: int, channels: int, arrays: Mapping[str, np.ndarray], decode: Decoder
) -> None:
    """Write ``rows``' images into a new ``.npy`` at ``target`` without a second in-memory copy."""
    shape = (image_size, image_size, channels)
    x = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(rows),) + shape)
    try:
        # Reserve the blocks now: a full disk is then an OSError here, not a SIGBUS while writing the map.
        with open(target, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        missing: list[int] = []
        for k, path in enumerate(rows["path"]):
            array = arrays.get(path)
            if array is None:
                missing.append(k)
                continue
            array = np.asarray(array)
            if array.shape != shape or array.dtype != np.uint8:
                raise DataError(f"arrays[{path!r}] is {array.dtype} {array.shape}, expected uint8 {shape}")
            x[k] = array
        paths = rows["path"].tolist()
        per_call = max(64, _DECODE_CHUNK_BYTES // (image_size * image_size * channels))
        for start in range(0, len(missing), per_call):
            chunk = missing[start : start + per_call]
            decoded = decode([paths[k] for k in chunk], image_size, channels)
            if decoded.shape != (len(chunk),) + shape or decoded.dtype != np.uint8:
                raise DataError(
                    f"decode returned {decoded.dtype} {decoded.shape} for {len(chunk)} paths, "
                    f"expected uint8 {(len(chunk),) + shape}"
                )
            x[chunk] = decoded
        x.flush()
    finally:
        del x


def ensure_cache(
    manifest: pd.DataFrame,
    classes: Sequence[str],
    image_size: int,
    channels: int = 3,
    root: Path | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    decode: Decoder | None = None,
    window: str | None = None,
) -> tuple[CachedSplits, bool]:
    """Return the decoded arrays of every split, building the cache if needed.

    Args:
        manifest: a split manifest (columns ``path``, ``label``, ``split``, ``sha256``).
        classes: class names in index order (``y`` indexes into it).
        image_size: height and width to decode to.
        channels: 1 (grey) or 3 (RGB).
        root: cache root; default :func:`medtune.settings.cache_dir`.
        arrays: already-decoded images by path, uint8 ``(image_size, image_size, channels)``;
            used instead of decoding those files.
        decode: ``decode(paths, image_size, channels) -> uint8 (N, size, size, channels)`` for the
            other files; default :func:`medtune.datasets.images.decode_many`.
        window: the DICOM window ``center,width`` to decode grey DICOM files with (part of the key);
            None: each file's own. ``arrays`` must have been decoded with the same window.

    Returns:
        ``(cache, reused)``: ``reused`` is True when a complete cache was already on disk. The
        returned ``paths`` always name the files of ``manifest`` (a reused cache may have been
        built from the same contents at other paths).

    Raises:
        DataError: bad arguments, a label not in ``classes``, or decoding failed.
    """
    from medtune.datasets.dicom import window_label

    _check_manifest(manifest)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"classes must be distinct and non-empty, got {classes!r}")
    unknown = sorted(set(manifest["label"].astype(str)) - set(classes))
    if unknown:
        raise DataError(f"manifest labels {unknown} are not in classes {classes}")
    if len(manifest) == 0:
        raise DataError("manifest is empty: nothing to cache")
    image_size, channels = int(image_size), int(channels)

    root = Path(root) if root is not None else settings.cache_dir()
    arrays_dir = root / "arrays"
    key = cache_key(manifest, image_size, channels, classes, window)
    final = arrays_dir / key
    digest = manifest_hash(manifest)
    rows_of = split_rows(manifest)
    current_paths = {s: rows["path"].tolist() for s, rows in rows_of.items()}

    if final.is_dir():
        try:
            cache = load_cache(final)
            meta = json.loads((final / "meta.json").read_text(encoding="utf-8"))
            if meta.get("manifest_hash") == digest and cache.classes == classes and set(cache.x) == set(rows_of):
                cache.paths = current_paths
                logger.info("reusing array cache %s", final)
                return cache, True
            logger.warning("array cache %s does not match its key; rebuilding it", final)
        except DataError as exc:
            logger.warning("array cache %s is unreadable (%s); rebuilding it", final, exc)
        stale = final.with_name(f".{key}.stale-{os.getpid()}")
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)

    try:
        arrays_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_build_prefix(key)}{os.getpid()}-", dir=arrays_dir))
    except OSError as exc:
        raise _unwritable(arrays_dir, exc) from exc
    _remove_stale_builds(arrays_dir, key)
    decode = decode or functools.partial(_default_decode, window=window)
    arrays = arrays or {}
    try:
        index = {c: i for i, c in enumerate(classes)}
        counts = {}
        for split, rows in rows_of.items():
            _fill_split(tmp / f"{split}_x.npy", rows, image_size, channels, arrays, decode)
            np.save(tmp / f"{split}_y.npy", rows["label"].map(index).to_numpy(dtype=np.int32), allow_pickle=False)
            counts[split] = {c: int((rows["label"] == c).sum()) for c in classes}
        meta = {
            "format": CACHE_FORMAT_VERSION,
            "key": key,
            "classes": classes,
            "image_size": image_size,
            "channels": channels,
            "window": window_label(window),
            "manifest_hash": digest,
            "splits": list(rows_of),
            "counts": counts,
            "paths": current_paths,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
            logger.info("array cache %s was built concurrently; using that one", final)
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:  # disk full, quota, permissions: nothing half-written is left to trust
        shutil.rmtree(tmp, ignore_errors=True)
        raise _unwritable(arrays_dir, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built array cache %s (%s)", final, ", ".join(f"{s} {len(r)}" for s, r in rows_of.items()))
    cache = load_cache(final)
    cache.paths = current_paths
    return cache, False


def absolute_manifest(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    """A logged manifest (paths relative to the dataset folder) with paths under ``root``."""
    out = manifest.copy()
    out["path"] = [str(root / p) for p in out["path"]]
    return out
