"""Walk a dataset's class folders and fully decode every candidate image.

Each file either becomes an :class:`~medtune.datasets.records.ImageRecord` (content hash,
perceptual hash, size, mode) or a :class:`~medtune.datasets.records.SkippedFile` with a reason.
Entries ignored on purpose are counted by kind in ``ScanResult.ignored`` (one count per entry:
an ignored folder counts once):

* ``hidden``: names starting with a dot (``.DS_Store``, ``._x.jpg``, ``.git/``);
* ``checkpoint``: ``.ipynb_checkpoints`` folders;
* ``mask``: ``masks``/``mask`` folders (segmentation masks are not training images);
* ``symlink_outside``: symbolic links whose target lies outside the dataset root (links inside
  it are followed);
* ``non_image_extension``: files such as ``.csv``, ``.txt``, ``.xlsx``, ``.md``, ``.json``
  (files with another extension, or none, are tried);
* ``unlisted``: with a labels table, image files that have no row in it.

With a labels table the whole dataset folder is walked the same way, and the table's rows give
the candidates their labels (a row whose file is missing or ignored is skipped, with its line).
Each record carries its patient's key: the table's ``patient`` column, else a DICOM file's
``PatientID``, keyed by :class:`~medtune.datasets.patients.PatientKeys` before it is kept.

An optional on-disk index, keyed by (path, size, mtime_ns), lets a re-scan of unchanged files
skip decoding altogether.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medtune.datasets import images
from medtune.datasets.labels_table import LabelsTable
from medtune.datasets.layout import MASK_NAMES, Layout
from medtune.datasets.patients import PatientKeys, dicom_patient
from medtune.datasets.records import ImageRecord, ScanResult, SkippedFile
from medtune.errors import DataError

logger = logging.getLogger(__name__)

NON_IMAGE_EXTENSIONS = frozenset(
    {
        ".csv", ".tsv", ".txt", ".md", ".rst", ".json", ".yaml", ".yml", ".xml", ".html", ".htm",
        ".xls", ".xlsx", ".ods", ".doc", ".docx", ".pdf", ".rtf", ".log", ".ini", ".cfg",
        ".py", ".ipynb", ".sh", ".zip", ".gz", ".tgz", ".tar", ".7z", ".rar",
        ".npy", ".npz", ".pkl", ".pickle", ".h5", ".hdf5", ".keras", ".db", ".sqlite", ".parquet",
    }
)  # fmt: skip

#: Why an entry is ignored on purpose, by kind (the report lists each entry with this reason).
IGNORED_REASONS = {
    "hidden": "hidden (name starts with a dot)",
    "checkpoint": "notebook checkpoint folder",
    "mask": "mask folder (segmentation masks are not training images)",
    "symlink_outside": "symbolic link to outside the dataset",
    "non_image_extension": "not an image file",
    "unlisted": "no row in the labels table",
}

#: Bumped when what the index stores changes; an index of another version is ignored.
INDEX_VERSION = 2


@dataclass(frozen=True)
class _Candidate:
    path: str
    label: str
    source: str
    size: int
    mtime_ns: int
    patient: str = ""  # a key, from the labels table
    split: str = ""  # given by the labels table


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


class _Walker:
    """Collects candidate files, ignored counts and broken links, in a deterministic order."""

    def __init__(self, root: Path) -> None:
        self.root_real = os.path.realpath(root)
        self.ignored: Counter[str] = Counter()
        self.ignored_files: list[SkippedFile] = []  # what was passed over, by name, with the reason
        self.skipped: list[SkippedFile] = []
        self.candidates: list[_Candidate] = []
        self._seen: set[str] = set()
        self._visited_dirs: set[str] = set()

    def walk(self, folder: Path, label: str, source: str) -> None:
        real = os.path.realpath(folder)
        if not _inside(real, self.root_real):
            self._ignore(str(folder), "symlink_outside")
            logger.warning("class folder %s points outside the dataset root; ignored", folder)
            return
        stack = [os.path.abspath(folder)]
        while stack:
            directory = stack.pop()
            real_dir = os.path.realpath(directory)
            if real_dir in self._visited_dirs:
                continue
            self._visited_dirs.add(real_dir)
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                self.skipped.append(SkippedFile(directory, f"unreadable folder: {exc.strerror or exc}"))
                continue
            subdirs = []
            for entry in entries:
                sub = self._visit(entry, label, source)
                if sub:
                    subdirs.append(sub)
            stack.extend(reversed(subdirs))  # depth-first, in name order

    def _ignore(self, path: str, kind: str) -> None:
        self.ignored[kind] += 1
        reason = IGNORED_REASONS[kind]
        if kind == "non_image_extension":
            reason = f"{reason} ({os.path.splitext(path)[1].lower()})"
        self.ignored_files.append(SkippedFile(path, reason))

    def _visit(self, entry: os.DirEntry, label: str, source: str) -> str | None:
        name = entry.name
        if name == ".ipynb_checkpoints":
            self._ignore(entry.path, "checkpoint")
            return None
        if name.startswith("."):
            self._ignore(entry.path, "hidden")
            return None
        path = entry.path
        try:
            if entry.is_symlink():
                target = os.path.realpath(path)
                if not _inside(target, self.root_real):
                    self._ignore(path, "symlink_outside")
                    return None
                if not os.path.exists(target):
                    self.skipped.append(SkippedFile(path, "broken symlink"))
                    return None
            is_dir = entry.is_dir()
        except OSError as exc:
            self.skipped.append(SkippedFile(path, f"unreadable: {exc.strerror or exc}"))
            return None
        if is_dir:
            if name.lower() in MASK_NAMES:
                self._ignore(path, "mask")
                return None
            return path
        if os.path.splitext(name)[1].lower() in NON_IMAGE_EXTENSIONS:
            self._ignore(path, "non_image_extension")
            return None
        if path in self._seen:
            return None
        self._seen.add(path)
        try:
            st = entry.stat()
        except OSError as exc:
            self.skipped.append(SkippedFile(path, f"unreadable: {exc.strerror or exc}"))
            return None
        self.candidates.append(_Candidate(path, label, source, st.st_size, st.st_mtime_ns))
        return None


def _probe(task: tuple[str, int | None, int, PatientKeys | None, str | None]) -> tuple:
    """Decode one file in a worker; returns ``("ok", sha, phash, w, h, mode, array|None, patient)`` or
    ``("skip", reason, cacheable)``."""
    import imagehash

    path, keep_size, channels, keys, window = task
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return ("skip", f"unreadable: {exc.strerror or exc}", False)
    try:
        img = images.open_bytes(data, path, window=window)
        grey = images.convert_mode(img, 1)
        phash = str(imagehash.phash(grey))
        arr = images.to_array(img, keep_size, channels) if keep_size else None
    except images.ImageDecodeError as exc:
        return ("skip", exc.reason, True)
    except Exception as exc:  # a decoder bug on one file must not stop the scan
        return ("skip", f"unreadable: {' '.join(str(exc).split())[:200] or type(exc).__name__}", True)
    sha = hashlib.sha256(data).hexdigest()
    patient = dicom_patient(data, keys) if keys is not None else ""
    return ("ok", sha, phash, img.size[0], img.size[1], img.mode, arr, patient)


def _from_table(walker: _Walker, table: LabelsTable, root: str) -> None:
    """The walked files that have a row become the candidates, labelled by it; the rest are ``unlisted``."""
    found = {c.path: c for c in walker.candidates}
    ignored = {s.path: s.reason for s in walker.ignored_files}
    walker.candidates = []
    for row in table.rows:
        cand = found.pop(row.path, None)
        if cand is not None:
            source = "test" if row.split == "test" else "train"
            walker.candidates.append(
                replace(cand, label=row.label, source=source, patient=row.patient, split=row.split)
            )
            continue
        reason = "missing file"
        if os.path.lexists(row.path):  # the walk passed over it, or a folder above it
            folder = row.path
            while folder != root and folder not in ignored:
                folder = os.path.dirname(folder)
            reason = ignored.get(folder, "not a file")
        walker.skipped.append(SkippedFile(row.path, f"{reason} ({table.file.name} line {row.line})"))
    for path in sorted(found):
        walker._ignore(path, "unlisted")


def _load_index(index_path: Path | None, keys: PatientKeys | None) -> dict[str, list]:
    if index_path is None or not Path(index_path).is_file():
        return {}
    try:
        with open(index_path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        logger.warning("scan index %s unreadable (%s); rebuilding it", index_path, exc)
        return {}
    if doc.get("version") != INDEX_VERSION or doc.get("max_pixels") != images.MAX_PIXELS:
        logger.info("scan index %s is from another version; rebuilding it", index_path)
        return {}
    if doc.get("patients") != (keys.fingerprint if keys else None):
        logger.info("scan index %s holds patient keys of another salt; rebuilding it", index_path)
        return {}
    entries = doc.get("entries")
    return entries if isinstance(entries, dict) else {}


def _save_index(index_path: Path, entries: dict[str, list], keys: PatientKeys | None) -> None:
    index_path = Path(index_path)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f"{index_path.name}.{os.getpid()}.tmp")
    patients = keys.fingerprint if keys else None
    doc = {"version": INDEX_VERSION, "max_pixels": images.MAX_PIXELS, "patients": patients, "entries": entries}
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    os.replace(tmp, index_path)


def _run(tasks: list[tuple], workers: int, on_result: Callable[[int, tuple], None]) -> None:
    if workers <= 1 or len(tasks) < images.MIN_FILES_FOR_POOL:
        for i, task in enumerate(tasks):
            on_result(i, _probe(task))
        return
    chunksize = max(1, min(32, len(tasks) // (workers * 16)))
    with images.worker_pool(workers) as pool:
        for i, result in enumerate(pool.imap(_probe, tasks, chunksize=chunksize)):
            on_result(i, result)


def scan_dataset(
    layout: Layout,
    *,
    workers: int | None = None,
    index_path: Path | None = None,
    keep_size: int | None = None,
    channels: int = 3,
    progress: Callable[[int, int], None] | None = None,
    keys: PatientKeys | None = None,
    window: str | None = None,
) -> tuple[ScanResult, dict[str, np.ndarray]]:
    """Validate every image of a dataset layout.

    Args:
        layout: the class folders, from :func:`medtune.datasets.layout.detect_layout`.
        workers: decoding processes; ``None`` means ``min(2, cpu count)``.
        index_path: a JSON file remembering results by (path, size, mtime_ns); files unchanged
            since it was written are not decoded again. Created or updated by this call.
        keep_size: when set, also return each freshly decoded image as a
            ``(keep_size, keep_size, channels)`` ``uint8`` array (see
            :func:`medtune.datasets.images.to_array`); files answered from the index have no
            array, callers decode those themselves.
        channels: 3 or 1, for the arrays returned with ``keep_size``.
        progress: optional ``callback(done, total)`` over candidate files.
        keys: the dataset's patient keys; with them, a DICOM file's ``PatientID`` gives its
            record's patient (keyed; the ID itself is never kept). Without them it is not read.
        window: a DICOM window ``center,width`` for grey DICOM files (:mod:`medtune.datasets.dicom`);
            the index does not record it, so give each window its own ``index_path``.

    Returns:
        The scan result (records sorted by source, label, path) and the arrays by file path
        (the same string as ``ImageRecord.path``; empty without ``keep_size``).

    Raises:
        DataError: no valid image at all, or fewer than 2 classes have valid images.
    """
    walker = _Walker(Path(layout.root))
    for source, mapping in (("train", layout.train), ("test", layout.test or {})):
        for label in sorted(mapping):
            for folder in mapping[label]:
                walker.walk(Path(folder), label, source)
    if layout.table is not None:
        walker.walk(Path(layout.root), "", "train")
        _from_table(walker, layout.table, os.path.abspath(layout.root))

    candidates = walker.candidates
    skipped = list(walker.skipped)
    records: list[ImageRecord] = []
    arrays: dict[str, np.ndarray] = {}
    old_index = _load_index(index_path, keys)
    new_index: dict[str, list] = {}
    total = len(candidates)
    done = 0

    def add(cand: _Candidate, entry: list) -> None:
        sha, phash, width, height, mode, reason, patient = entry[2:9]
        if reason is not None:
            skipped.append(SkippedFile(cand.path, reason))
        else:
            records.append(
                ImageRecord(
                    cand.path, cand.label, cand.source, sha, phash, width, height, mode,
                    patient=cand.patient or patient, split=cand.split,
                )
            )  # fmt: skip

    todo: list[_Candidate] = []
    for cand in candidates:
        hit = old_index.get(cand.path)
        if hit and len(hit) == 9 and hit[0] == cand.size and hit[1] == cand.mtime_ns:
            new_index[cand.path] = hit
            add(cand, hit)
            done += 1
        else:
            todo.append(cand)
    if progress and done:
        progress(done, total)
    if todo:
        logger.info("decoding %d of %d files (%d known from the index)", len(todo), total, total - len(todo))

    def on_result(i: int, result: tuple) -> None:
        nonlocal done
        cand = todo[i]
        if result[0] == "ok":
            _, sha, phash, width, height, mode, arr, patient = result
            entry = [cand.size, cand.mtime_ns, sha, phash, width, height, mode, None, patient]
            if arr is not None:
                arrays[cand.path] = arr
        else:
            _, reason, cacheable = result
            entry = [cand.size, cand.mtime_ns, None, None, None, None, None, reason, ""]
            if not cacheable:
                skipped.append(SkippedFile(cand.path, reason))
                entry = None
        if entry is not None:
            new_index[cand.path] = entry
            add(cand, entry)
        done += 1
        if progress:
            progress(done, total)

    n_workers = images.default_workers() if workers is None else max(1, int(workers))
    _run([(c.path, keep_size, channels, keys, window) for c in todo], n_workers, on_result)

    if index_path is not None:
        prefix = os.path.abspath(layout.root).rstrip(os.sep) + os.sep
        kept = {k: v for k, v in old_index.items() if not k.startswith(prefix)}
        kept.update(new_index)
        _save_index(Path(index_path), kept, keys)

    result = _result(layout, records, skipped, walker.ignored)
    result.ignored_files = sorted(walker.ignored_files, key=lambda s: s.path)
    return result, arrays


def _counts(counts: Counter) -> str:
    """``" (3 truncated image, 1 zero-byte file)"``, or nothing when there are none."""
    return f" ({', '.join(f'{n} {what}' for what, n in counts.most_common())})" if counts else ""


def _result(layout: Layout, records: list[ImageRecord], skipped: list[SkippedFile], ignored: Counter) -> ScanResult:
    root = str(layout.root)
    records.sort(key=lambda r: (r.source, r.label, r.path))
    skipped.sort(key=lambda s: s.path)
    reasons = Counter(s.reason for s in skipped)
    logger.info(
        "scanned %s: %d valid images, %d skipped%s, %d ignored%s",
        root, len(records), len(skipped), _counts(reasons), sum(ignored.values()), _counts(ignored),
    )  # fmt: skip
    if not records:
        raise DataError(f"no valid images in {root} ({len(skipped)} files failed{_counts(reasons)})")
    classes = sorted({r.label for r in records})
    empty = sorted(set(layout.classes) - set(classes))
    if empty:
        logger.warning("dataset %s: classes without any valid image: %s", root, ", ".join(empty))
    if len(classes) < 2:
        raise DataError(f"only one class with valid images ('{classes[0]}') in {root}: at least 2 are needed")
    return ScanResult(
        root=root,
        classes=classes,
        records=records,
        skipped=skipped,
        ignored=dict(ignored),
        has_official_test=any(r.source == "test" for r in records) and bool(layout.test or layout.table),
    )
