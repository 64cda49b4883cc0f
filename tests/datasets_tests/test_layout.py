"""Dataset folder layouts: which folders hold which class."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medtune.datasets.layout import Layout, detect_layout
from medtune.errors import DataError


def _make(root: Path, *rel_files: str) -> Path:
    for rel in rel_files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def _rel(layout: Layout, mapping) -> dict[str, list[str]]:
    return {k: [p.relative_to(layout.root).as_posix() for p in v] for k, v in mapping.items()}


def test_train_and_test_folders(tmp_path):
    _make(
        tmp_path,
        "Training/glioma/a.jpg", "Training/notumor/b.jpg",
        "Testing/glioma/c.jpg", "Testing/notumor/d.jpg", "README.md",
    )  # fmt: skip
    layout = detect_layout(tmp_path, ["glioma", "notumor"])
    assert _rel(layout, layout.train) == {"glioma": ["Training/glioma"], "notumor": ["Training/notumor"]}
    assert _rel(layout, layout.test) == {"glioma": ["Testing/glioma"], "notumor": ["Testing/notumor"]}
    assert layout.classes == ["glioma", "notumor"]


def test_split_names_are_case_insensitive_and_val_folds_into_train(tmp_path):
    _make(
        tmp_path,
        "TRAIN/a/1.png", "TRAIN/b/2.png", "Valid/a/3.png", "Valid/b/4.png", "test/a/5.png", "test/b/6.png",
    )  # fmt: skip
    layout = detect_layout(tmp_path)
    assert _rel(layout, layout.train) == {"a": ["TRAIN/a", "Valid/a"], "b": ["TRAIN/b", "Valid/b"]}
    assert _rel(layout, layout.test) == {"a": ["test/a"], "b": ["test/b"]}


def test_only_training_folder_gives_no_test(tmp_path):
    _make(tmp_path, "Training/glioma/a.jpg", "Training/pituitary/b.jpg", "SOURCE.md")
    layout = detect_layout(tmp_path)
    assert layout.test is None
    assert sorted(layout.train) == ["glioma", "pituitary"]


def test_flat_class_folders(tmp_path):
    _make(tmp_path, "COVID/1.png", "Normal/2.png", "Viral Pneumonia/3.png")
    layout = detect_layout(tmp_path)
    assert layout.test is None
    assert _rel(layout, layout.train) == {c: [c] for c in ("COVID", "Normal", "Viral Pneumonia")}


def test_single_wrapper_folder_is_entered(tmp_path):
    _make(
        tmp_path,
        "archive/data/train/x/1.jpg", "archive/data/train/y/2.jpg",
        "archive/data/test/x/3.jpg", "archive/data/test/y/4.jpg",
    )  # fmt: skip
    layout = detect_layout(tmp_path)
    assert layout.root == tmp_path
    assert _rel(layout, layout.train) == {"x": ["archive/data/train/x"], "y": ["archive/data/train/y"]}


def test_nested_images_and_masks_use_images_only(tmp_path):
    w = "COVID-19_Radiography_Dataset"
    _make(
        tmp_path,
        f"{w}/COVID/images/1.png", f"{w}/COVID/masks/1.png",
        f"{w}/Viral Pneumonia/images/2.png", f"{w}/Viral Pneumonia/masks/2.png",
        f"{w}/COVID.metadata.xlsx", f"{w}/README.md.txt",
    )  # fmt: skip
    layout = detect_layout(tmp_path, ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"])
    assert _rel(layout, layout.train) == {c: [f"{w}/{c}/images"] for c in ("COVID", "Viral Pneumonia")}


def test_top_level_images_and_masks_folders(tmp_path):
    _make(tmp_path, "images/a/1.png", "images/b/2.png", "masks/a/1.png", "masks/b/2.png")
    layout = detect_layout(tmp_path)
    assert _rel(layout, layout.train) == {"a": ["images/a"], "b": ["images/b"]}


def test_classes_named_mask_are_kept_without_an_images_folder(tmp_path):
    _make(tmp_path, "mask/1.png", "no_mask/2.png")
    assert sorted(detect_layout(tmp_path).train) == ["mask", "no_mask"]


def test_hidden_and_checkpoint_folders_ignored(tmp_path):
    _make(tmp_path, "a/1.png", "b/2.png", ".ipynb_checkpoints/c/3.png", ".git/x", "__MACOSX/a/._1.png")
    assert sorted(detect_layout(tmp_path).train) == ["a", "b"]


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found: .*nowhere"):
        detect_layout(tmp_path / "nowhere")


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        detect_layout(tmp_path)


def test_images_without_class_folders_is_an_error(tmp_path):
    _make(tmp_path, "1.png", "2.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        detect_layout(tmp_path)


def test_single_class_is_an_error(tmp_path):
    _make(tmp_path, "only/1.png", "only/2.png")
    with pytest.raises(DataError, match="only one class folder \\('only'\\)"):
        detect_layout(tmp_path)


def test_single_class_with_images_and_masks_is_an_error(tmp_path):
    _make(tmp_path, "COVID/images/1.png", "COVID/masks/1.png")
    with pytest.raises(DataError, match="only one class folder \\('COVID'\\)"):
        detect_layout(tmp_path)


def test_test_folder_without_train_is_an_error(tmp_path):
    _make(tmp_path, "test/a/1.png", "test/b/1.png")
    with pytest.raises(DataError, match="no training folder"):
        detect_layout(tmp_path)


def test_missing_expected_class_is_a_warning_and_extras_kept(tmp_path, caplog):
    _make(tmp_path, "glioma/1.jpg", "extra/2.jpg")
    with caplog.at_level(logging.WARNING, logger="medtune.datasets.layout"):
        layout = detect_layout(tmp_path, ["glioma", "pituitary"])
    assert sorted(layout.train) == ["extra", "glioma"]
    assert "pituitary" in caplog.text


def test_classes_left_out_of_train_and_test(tmp_path):
    from medtune.errors import ConfigError

    _make(tmp_path, "Train/a/1.jpg", "Train/b/2.jpg", "Train/c d/3.jpg", "Test/a/4.jpg", "Test/c d/5.jpg")
    layout = detect_layout(tmp_path).without(["c d"])
    assert layout.classes == ["a", "b"] and list(layout.test) == ["a"]
    with pytest.raises(ConfigError, match="'e' is no class of"):
        detect_layout(tmp_path).without(["e"])
    with pytest.raises(ConfigError, match="leaves 1 class"):
        detect_layout(tmp_path).without(["a", "b"])
