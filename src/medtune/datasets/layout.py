"""Find the class folders of a dataset, whatever its published folder layout.

Handled layouts (folder names compared case-insensitively):

* ``train/<class>/`` + ``test/<class>/`` (also ``training``/``testing``); ``val``, ``valid`` and
  ``validation`` folders are folded into train; only a train folder gives ``test=None``;
* one folder of classes, ``<class>/``;
* single wrapper folders around either, e.g. ``COVID-19_Radiography_Dataset/<class>/``;
* ``<class>/images/`` beside ``<class>/masks/``: the ``images`` folder is used, masks are not.

Hidden folders, ``.ipynb_checkpoints`` and ``__MACOSX`` are ignored; loose files beside the
folders (README, metadata spreadsheets) are ignored too.

With a labels table (:func:`table_layout`), the table names the images and their classes instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medtune.datasets.labels_table import LabelsTable, read_table
from medtune.datasets.patients import PatientKeys
from medtune.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TRAIN_NAMES = frozenset({"train", "training"})
VAL_NAMES = frozenset({"val", "valid", "validation"})
TEST_NAMES = frozenset({"test", "testing"})
IMAGES_NAMES = frozenset({"images", "image", "imgs"})
MASK_NAMES = frozenset({"masks", "mask"})
IGNORED_DIRS = frozenset({".ipynb_checkpoints", "__macosx", "__pycache__"})

_MAX_WRAPPER_DEPTH = 4


@dataclass
class Layout:
    """Where each class's images are.

    Attributes:
        root: the dataset folder as given.
        train: class name -> folders holding its training images (scanned recursively).
        test: class name -> folders holding its official test images; ``None`` without a test split.
        table: the labels table that names the images instead (then ``train`` and ``test`` are empty).
    """

    root: Path
    train: dict[str, list[Path]]
    test: dict[str, list[Path]] | None
    table: LabelsTable | None = None

    @property
    def classes(self) -> list[str]:
        """Sorted class names over train and test (or the table)."""
        names = set(self.train) | set(self.test or {}) | set(self.table.classes if self.table else ())
        return sorted(names)

    def without(self, classes: Sequence[str]) -> Layout:
        """This layout with ``classes`` left out of train and test.

        Raises:
            ConfigError: a name that is no class here, or fewer than two classes left.
        """
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise ConfigError(
                f"exclude_classes: {', '.join(map(repr, unknown))} is no class of {self.root} "
                f"(classes: {', '.join(self.classes)})"
            )
        left = [c for c in self.classes if c not in classes]
        if len(left) < 2:
            raise ConfigError(f"exclude_classes: leaves {len(left)} class(es) of {self.root}; a classifier needs two")
        drop = set(classes)
        test = {k: v for k, v in self.test.items() if k not in drop} if self.test is not None else None
        table = self.table.without(drop) if self.table else None
        return Layout(self.root, {k: v for k, v in self.train.items() if k not in drop}, test, table)


def table_layout(root: Path | str, labels: str | Path, keys: PatientKeys) -> Layout:
    """The layout of a dataset folder whose images a labels table names (see :mod:`~medtune.datasets.labels_table`).

    Raises:
        DataError: the folder is missing, or the table is (one line naming the file and line).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    return Layout(root=root, train={}, test=None, table=read_table(labels, root, keys))


def is_ignored_dir(name: str) -> bool:
    """Whether a folder name is hidden or a tool's by-product (never a class or image folder)."""
    return name.startswith(".") or name.lower() in IGNORED_DIRS


def _subdirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"cannot list dataset folder {folder}: {exc.strerror or exc}") from exc
    return [p for p in entries if not is_ignored_dir(p.name) and p.is_dir()]


def _looks_like_class(folder: Path) -> bool:
    """A class folder holds images directly or in images/ (+ masks/) sub-folders only."""
    return all(d.name.lower() in IMAGES_NAMES | MASK_NAMES for d in _subdirs(folder))


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Class name -> [image folder] for each class sub-folder of ``folder``."""
    classes: dict[str, list[Path]] = {}
    class_dirs = _subdirs(folder)
    if any(d.name.lower() in IMAGES_NAMES for d in class_dirs):
        class_dirs = [d for d in class_dirs if d.name.lower() not in MASK_NAMES]
    for class_dir in class_dirs:
        inner = _subdirs(class_dir)
        images = [d for d in inner if d.name.lower() in IMAGES_NAMES]
        classes[class_dir.name] = [images[0]] if len(images) == 1 else [class_dir]
    return classes


def _merge(target: dict[str, list[Path]], extra: dict[str, list[Path]]) -> None:
    for name, folders in extra.items():
        target.setdefault(name, []).extend(folders)


def detect_layout(root: Path | str, expected_classes: Sequence[str] | None = None) -> Layout:
    """Work out the class folders of a dataset folder.

    Args:
        root: the dataset folder.
        expected_classes: class names the dataset should have; a missing one is logged as a
            warning, unexpected extra classes are kept.

    Returns:
        The layout, with ``root`` as given.

    Raises:
        DataError: the folder is missing, has no class sub-folders, or has a single class.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    folder = root
    for _ in range(_MAX_WRAPPER_DEPTH + 1):
        subdirs = _subdirs(folder)
        lowered = {d.name.lower() for d in subdirs}
        if lowered & (TRAIN_NAMES | VAL_NAMES | TEST_NAMES):
            layout = _split_layout(root, folder, subdirs)
            break
        if any(d.name.lower() in IMAGES_NAMES for d in subdirs):
            subdirs = [d for d in subdirs if d.name.lower() not in MASK_NAMES]  # images/ + masks/
        if len(subdirs) == 1 and not _looks_like_class(subdirs[0]):
            logger.debug("descending into wrapper folder %s", subdirs[0])
            folder = subdirs[0]
            continue
        layout = Layout(root=root, train=_class_folders(folder), test=None)
        break
    else:
        raise DataError(f"no class sub-folders found in {root} (too many nested single folders)")

    _check(layout, folder)
    if expected_classes:
        missing = sorted(set(expected_classes) - set(layout.train))
        if missing:
            logger.warning(
                "dataset %s: expected classes missing from the training folder: %s", root, ", ".join(missing)
            )
        extra = sorted(set(layout.classes) - set(expected_classes))
        if extra:
            logger.warning("dataset %s: classes not in the registry kept: %s", root, ", ".join(extra))
    return layout


def _split_layout(root: Path, folder: Path, subdirs: list[Path]) -> Layout:
    train: dict[str, list[Path]] = {}
    test: dict[str, list[Path]] = {}
    has_train = has_test = False
    for d in subdirs:
        name = d.name.lower()
        if name in TRAIN_NAMES or name in VAL_NAMES:
            has_train = has_train or name in TRAIN_NAMES
            _merge(train, _class_folders(d))
        elif name in TEST_NAMES:
            has_test = True
            _merge(test, _class_folders(d))
        else:
            logger.warning("dataset %s: folder %s ignored beside the train/test folders", root, d.name)
    if not has_train:
        if not train:
            raise DataError(f"no training folder (train/ or training/) in {folder}")
        logger.warning("dataset %s: no train folder; the validation folder is used for training", root)
    if has_test and not test:
        logger.warning("dataset %s: the test folder has no class sub-folders; ignored", root)
    if test:
        unknown = sorted(set(test) - set(train))
        if unknown:
            logger.warning("dataset %s: test classes absent from training: %s", root, ", ".join(unknown))
    return Layout(root=root, train=train, test=test or None)


def _check(layout: Layout, folder: Path) -> None:
    if not layout.train:
        raise DataError(f"no class sub-folders found in {folder}")
    if len(layout.train) < 2:
        only = next(iter(layout.train))
        raise DataError(f"only one class folder ('{only}') in {folder}: at least 2 classes are needed")
