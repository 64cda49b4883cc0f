"""Plain records passed between the scanning, de-duplication, split and cache stages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageRecord:
    """One image file that decoded fully.

    Attributes:
        path: absolute path of the file.
        label: class name, exactly as the folder is named (may contain spaces).
        source: the official folder it came from: ``"train"`` or ``"test"``.
        sha256: hex digest of the file bytes.
        phash: perceptual hash of the decoded image, 16 hex digits (64 bits).
        width, height: decoded size in pixels (after EXIF orientation).
        mode: PIL mode of the file before conversion (``"L"``, ``"RGBA"``, ``"I;16"``...).
        patient: the patient's salted key (:mod:`medtune.datasets.patients`), ``""`` if unknown.
        split: the split a labels table gives it (``train``, ``val``, ``test``), ``""`` if none.
    """

    path: str
    label: str
    source: str
    sha256: str
    phash: str
    width: int
    height: int
    mode: str
    patient: str = ""
    split: str = ""


@dataclass(frozen=True)
class SkippedFile:
    """A file that looked like a candidate image but could not be used."""

    path: str
    reason: str


@dataclass
class ScanResult:
    """What scanning a dataset folder found.

    Attributes:
        root: the dataset folder.
        classes: sorted class names.
        records: valid images, sorted by (source, label, path).
        skipped: files that failed validation, with a reason each.
        ignored: counts of entries ignored on purpose, by kind
            (``hidden``, ``checkpoint``, ``symlink_outside``, ``mask``, ``non_image_extension``...).
        ignored_files: the same entries by path, each with a readable reason.
        has_official_test: whether the layout had a separate test folder (or the labels table
            gives a ``test`` split).
    """

    root: str
    classes: list[str]
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    ignored_files: list[SkippedFile] = field(default_factory=list)  # each ignored entry, with its reason
    has_official_test: bool = False
