"""Patients: a salted key per patient, so that one patient's images never straddle two splits.

A patient comes from a labels table's ``patient`` column or from a DICOM file's ``PatientID``.
Neither value is ever stored: it is replaced at once by :meth:`PatientKeys.key`, an HMAC-SHA256
of the value under a random per-dataset salt, cut to 16 hex digits.

Why a keyed hash with a secret salt: patient IDs are short and guessable (medical record
numbers), so a plain hash in a shared manifest could be reversed by hashing every candidate
ID. The salt (32 random bytes, :func:`dataset_keys`) stays on this machine beside the dataset's
scan index and is never logged; without it a key says nothing about the patient. It is stable
across re-runs, so the keys in successive manifests agree; and the split does not depend on it
at all (keys only say which images belong together), so a lost salt changes the keys written,
never the split.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medtune.datasets.records import ImageRecord

logger = logging.getLogger(__name__)

#: One patient holding more than this share of a class's images is flagged in the split report.
MAX_PATIENT_SHARE = 0.2

_SALT_BYTES = 32
_KEY_HEX = 16


@dataclass(frozen=True)
class PatientKeys:
    """Turns a patient value into its key; picklable, so scan workers can use it."""

    salt: bytes

    def key(self, value: object) -> str:
        """The key of a patient value; ``""`` for an empty one (no patient known)."""
        text = str(value).strip() if value is not None else ""
        if not text:
            return ""
        return hmac.new(self.salt, text.encode("utf-8"), hashlib.sha256).hexdigest()[:_KEY_HEX]

    @property
    def fingerprint(self) -> str:
        """Says which salt made a set of keys (a scan index checks it), without revealing it."""
        return hmac.new(self.salt, b"medtune-salt-check", hashlib.sha256).hexdigest()[:8]


def dataset_keys(salt_file: Path) -> PatientKeys:
    """The keys of one dataset: its salt is read from ``salt_file``, created (mode 600) on first use."""
    salt_file = Path(salt_file)
    try:
        salt = salt_file.read_bytes()
    except FileNotFoundError:
        salt = b""
    if len(salt) != _SALT_BYTES:
        salt = secrets.token_bytes(_SALT_BYTES)
        salt_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = salt_file.with_name(f"{salt_file.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(salt)
        os.replace(tmp, salt_file)
    return PatientKeys(salt)


def dicom_patient(data: bytes, keys: PatientKeys) -> str:
    """The key of a DICOM file's ``PatientID`` (``""`` when it has none or is no DICOM file).

    Only that one tag is parsed (``specific_tags``), and it never leaves this function unhashed.
    """
    from medtune.datasets.dicom import is_dicom

    if not is_dicom(data):
        return ""
    import pydicom

    try:
        bare = data[128:132] != b"DICM"  # no preamble: an old export's bare dataset
        ds = pydicom.dcmread(io.BytesIO(data), force=bare, stop_before_pixels=True, specific_tags=["PatientID"])
        return keys.key(ds.get("PatientID", ""))
    except Exception:  # a header pydicom cannot parse: the image decoder reports the file
        return ""


def patient_groups(records: Sequence[ImageRecord]) -> list[list[int]]:
    """Record indices of each patient with two or more images, in record order."""
    by_patient: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        if record.patient:
            by_patient.setdefault(record.patient, []).append(i)
    return sorted((g for g in by_patient.values() if len(g) > 1), key=lambda g: g[0])


def join_groups(n: int, *partitions: Sequence[Sequence[int]]) -> list[list[int]]:
    """Groups that share a record merged (union-find), each sorted, ordered by first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for groups in partitions:
        for members in groups:
            root = find(members[0])
            for i in members[1:]:
                other = find(i)
                if other != root:
                    parent[other] = root
    merged: dict[int, list[int]] = {}
    for i in range(n):
        merged.setdefault(find(i), []).append(i)
    return sorted((g for g in merged.values() if len(g) > 1), key=lambda g: g[0])


def patient_summary(manifest, classes: Sequence[str]) -> dict:
    """Patients per split and the classes one patient dominates, for the split report.

    Args:
        manifest: the split manifest (columns ``label``, ``split``, ``patient``).
        classes: the class names.

    Returns:
        ``{"known": bool, "counts": {split: patients}, "images_without_patient": n,
        "straddling": n, "max_share": MAX_PATIENT_SHARE, "dominant": [...]}``; each ``dominant``
        entry names the patient key, the class, its images and the share.
    """
    with_patient = manifest[manifest["patient"] != ""]
    counts = {
        s: int(with_patient.loc[with_patient["split"] == s, "patient"].nunique()) for s in ("train", "val", "test")
    }
    straddling = int((with_patient.groupby("patient")["split"].nunique() > 1).sum()) if len(with_patient) else 0
    dominant = []
    for label in classes:
        of_class = manifest[manifest["label"] == label]
        images = Counter(of_class.loc[of_class["patient"] != "", "patient"])
        for patient, n in sorted(images.items()):
            share = n / len(of_class)
            if len(of_class) and share > MAX_PATIENT_SHARE:
                dominant.append({"patient": patient, "label": label, "images": n, "share": round(share, 3)})
    return {
        "known": bool(len(with_patient)),
        "counts": counts,
        "total": int(with_patient["patient"].nunique()),
        "images_without_patient": int(len(manifest) - len(with_patient)),
        "straddling": straddling,
        "max_share": MAX_PATIENT_SHARE,
        "dominant": dominant,
    }
