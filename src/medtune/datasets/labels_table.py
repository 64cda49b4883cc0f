"""Labels from a table instead of class folders: ``path,label`` (optional ``patient``, ``split``).

A CSV file, one row per image:

* ``path``: the image file, relative to the dataset folder (an absolute path must lie inside it);
* ``label``: its class;
* ``patient`` (optional): who the image shows; replaced at once by a salted key
  (:mod:`medtune.datasets.patients`), never kept or logged as written;
* ``split`` (optional): ``train``, ``val`` or ``test``, or empty to let the split decide. A
  ``test`` row is an official test image, as in a ``test/`` folder; ``val`` rows form the
  validation split; ``train`` rows never go to test, and give validation images when no row
  says ``val`` (as a ``train/`` folder does).

The rows become the candidates of :func:`medtune.datasets.scan.scan_dataset`, which reports a
row whose file is missing or unreadable and lists the files that have no row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medtune.datasets.patients import PatientKeys
from medtune.errors import DataError

GIVEN_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelRow:
    """One row: ``path`` absolute, ``patient`` already a key, ``line`` its line in the file."""

    path: str
    label: str
    patient: str
    split: str
    line: int


@dataclass(frozen=True)
class LabelsTable:
    """A labels table read and checked: its file and its rows, in file order."""

    file: Path
    rows: tuple[LabelRow, ...]

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.rows})

    def without(self, classes) -> LabelsTable:
        drop = set(classes)
        return LabelsTable(self.file, tuple(r for r in self.rows if r.label not in drop))


def find_table(labels: str | Path, root: Path) -> Path:
    """The labels file: as given when absolute, else in the dataset folder, then the working directory.

    Raises:
        DataError: no such file.
    """
    given = Path(labels).expanduser()
    places = [given] if given.is_absolute() else [Path(root) / given, Path.cwd() / given]
    for place in places:
        if place.is_file():
            return place
    raise DataError(f"labels={labels}: no such file (looked in {' and '.join(str(p.parent) for p in places)})")


def _read(file: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise DataError(f"labels file {file}: cannot read it as CSV ({text})") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    for column in ("path", "label"):
        if column not in frame.columns:
            raise DataError(
                f"labels file {file}: no {column!r} column (columns: {', '.join(frame.columns) or 'none'}; "
                "expected path,label and optionally patient,split)"
            )
    return frame


def read_table(labels: str | Path, root: Path, keys: PatientKeys) -> LabelsTable:
    """Read and check a labels table of the dataset folder ``root``.

    Raises:
        DataError: one line naming the file (and line) at fault: no such file, not CSV, a missing
            column, an empty path or label, a path outside ``root``, an unknown split, a path
            listed twice, or fewer than two classes.
    """
    file = find_table(labels, root)
    frame = _read(file)
    root_abs = os.path.abspath(root)
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    for index, values in enumerate(frame.to_dict("records")):
        line = index + 2  # line 1 is the header
        where = f"labels file {file} line {line}"
        raw_path, label = values["path"].strip(), values["label"].strip()
        if not raw_path or not label:
            raise DataError(f"{where}: empty {'path' if not raw_path else 'label'}")
        path = os.path.abspath(os.path.join(root_abs, raw_path))
        if not path.startswith(root_abs.rstrip(os.sep) + os.sep):
            raise DataError(f"{where}: {raw_path} is outside the dataset folder {root_abs}")
        if path in seen:
            raise DataError(f"{where}: {raw_path} is listed twice (also line {seen[path]})")
        seen[path] = line
        split = values.get("split", "").strip().lower()
        if split not in ("", *GIVEN_SPLITS):
            raise DataError(f"{where}: split {split!r} is none of {', '.join(GIVEN_SPLITS)} (or empty)")
        rows.append(LabelRow(path, label, keys.key(values.get("patient", "")), split, line))
    table = LabelsTable(file, tuple(rows))
    if len(table.classes) < 2:
        found = f"one class ({table.classes[0]!r})" if table.classes else "no rows"
        raise DataError(f"labels file {file}: the label column holds {found}; a classifier needs two")
    return table
