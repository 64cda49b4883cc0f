"""Where named datasets are found, and the one-line error when they are not."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest

from medtune.datasets import registry
from medtune.datasets.registry import DATASETS, DatasetSpec, resolve_dataset, safe_name
from medtune.errors import DatasetNotFound


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An isolated project folder and data root; no network, no real download."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.delenv("MEDTUNE_HOME", raising=False)
    monkeypatch.delenv("MEDTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(project)
    monkeypatch.setattr(registry, "network_available", lambda *a, **k: False)
    return tmp_path


def _fill(folder: Path) -> Path:
    (folder / "glioma").mkdir(parents=True)
    (folder / "glioma" / "a.jpg").write_bytes(b"x")
    return folder


def test_registry_entries():
    assert set(DATASETS) >= {"brain_mri", "dermnet", "covid19_radiography", "synthetic"}
    assert DATASETS["brain_mri"].classes == ("glioma", "meningioma", "notumor", "pituitary")
    assert DATASETS["brain_mri"].kaggle_handle == "masoudnickparvar/brain-tumor-mri-dataset"
    assert len(DATASETS["dermnet"].classes) == 23 and "Urticaria Hives" in DATASETS["dermnet"].classes
    assert DATASETS["covid19_radiography"].subdir == "COVID-19_Radiography_Dataset"
    assert DATASETS["synthetic"].kaggle_handle is None
    assert all(isinstance(s, DatasetSpec) and s.name == k for k, s in DATASETS.items())


def test_data_dir_comes_first(places, monkeypatch):
    env_root = places / "env"
    _fill(env_root / "brain_mri")
    monkeypatch.setenv("MEDTUNE_DATA_DIR", str(env_root))
    given = _fill(places / "given")
    found = resolve_dataset("brain_mri", str(given))
    assert found.root == given and found.name == "brain_mri" and not found.downloaded
    assert found.spec is DATASETS["brain_mri"]


def test_env_data_dir_before_project_data(places, monkeypatch):
    env_root = places / "env"
    _fill(env_root / "brain_mri")
    _fill(places / "project" / "data" / "brain_mri")
    monkeypatch.setenv("MEDTUNE_DATA_DIR", str(env_root))
    assert resolve_dataset("brain_mri").root == (env_root / "brain_mri").resolve()


def test_project_data_folder_used_last(places):
    target = _fill(places / "project" / "data" / "dermnet")
    assert resolve_dataset("dermnet").root == target.resolve()


def test_missing_data_dir_falls_back_with_a_warning(places, caplog):
    target = _fill(places / "project" / "data" / "brain_mri")
    found = resolve_dataset("brain_mri", str(places / "typo"))
    assert found.root == target.resolve()
    assert "typo" in caplog.text


def test_empty_folder_does_not_count(places):
    (places / "project" / "data" / "brain_mri").mkdir(parents=True)
    with pytest.raises(DatasetNotFound):
        resolve_dataset("brain_mri")


def test_covid_subdir_is_entered(places):
    target = _fill(places / "project" / "data" / "covid19_radiography" / "COVID-19_Radiography_Dataset")
    assert resolve_dataset("covid19_radiography").root == target.resolve()


def test_offline_fails_fast_with_one_line(places, monkeypatch):
    import kagglehub

    def no_download(*args, **kwargs):
        pytest.fail("must not download offline")

    monkeypatch.setattr(kagglehub, "dataset_download", no_download)
    start = time.perf_counter()
    with pytest.raises(DatasetNotFound) as info:
        resolve_dataset("brain_mri")
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert "\n" not in msg
    handle = "masoudnickparvar/brain-tumor-mri-dataset"
    for part in ("'brain_mri'", "--data-dir", "$MEDTUNE_DATA_DIR/brain_mri", "./data/brain_mri", handle):
        assert part in msg


def test_download_not_allowed(places):
    with pytest.raises(DatasetNotFound, match="download not allowed"):
        resolve_dataset("dermnet", allow_download=False)


def test_download_goes_to_first_place_and_enters_subdir(places, monkeypatch):
    import kagglehub

    calls = []

    def fake_download(handle, *, output_dir):
        calls.append((handle, output_dir))
        _fill(Path(output_dir) / "COVID-19_Radiography_Dataset")
        return output_dir

    monkeypatch.setattr(registry, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    found = resolve_dataset("covid19_radiography")
    target = places / "project" / "data" / "covid19_radiography"
    assert calls == [("tawsifurrahman/covid19-radiography-database", str(target))]
    assert found.downloaded and found.root == target / "COVID-19_Radiography_Dataset"


def test_download_failure_is_one_line(places, monkeypatch):
    import kagglehub

    def boom(*a, **k):
        raise RuntimeError("403 Forbidden\nplease log in")

    monkeypatch.setattr(registry, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(kagglehub, "dataset_download", boom)
    with pytest.raises(DatasetNotFound, match="download failed: 403 Forbidden please log in") as info:
        resolve_dataset("brain_mri")
    assert "\n" not in str(info.value)


def test_network_check_is_bounded():
    start = time.perf_counter()
    assert registry.network_available("192.0.2.1", 443, timeout=0.3) is False  # TEST-NET: never answers
    assert time.perf_counter() - start < 1.5


def test_folder_path_used_as_dataset(places):
    folder = _fill(places / "My X-rays (2024)")
    found = resolve_dataset(str(folder))
    assert found.root == folder and found.spec is None and found.name == "My_X-rays__2024"


def test_unknown_name_lists_registered_names(places):
    with pytest.raises(DatasetNotFound) as info:
        resolve_dataset("brain_mir")
    msg = str(info.value)
    assert "brain_mir" in msg and "brain_mri" in msg and "dermnet" in msg and "\n" not in msg


def test_unknown_name_found_in_data_dir(places):
    folder = _fill(places / "mine")
    found = resolve_dataset("my data", str(folder))
    assert found.name == "my_data" and found.root == folder and found.spec is None


def test_resolve_synthetic_calls_generator(places, monkeypatch):
    calls = []

    def ensure_synthetic_dataset(root, **kwargs):
        calls.append(root)
        return Path(root) / "classes"

    fake = types.ModuleType("medtune.datasets.synthetic")
    fake.ensure_synthetic_dataset = ensure_synthetic_dataset
    monkeypatch.setitem(sys.modules, "medtune.datasets.synthetic", fake)
    found = resolve_dataset("synthetic")
    assert calls == [(places / "cache").resolve() / "synthetic"]
    assert found.root == calls[0] / "classes" and found.name == "synthetic"
    resolve_dataset("synthetic", str(places / "here"))
    assert calls[-1] == places / "here"


def test_own_images_in_data_dir_with_dataset_left_synthetic_say_how_to_name_them(places):
    from medtune.errors import DataError

    folder = _fill(places / "scans")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(DataError) as info:
        resolve_dataset("synthetic", str(folder))
    message = str(info.value)
    assert "\n" not in message and "refusing to overwrite" in message and f"dataset={folder}" in message
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing written or deleted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Acne and Rosacea Photos", "Acne_and_Rosacea_Photos"),
        ("Viral Pneumonia", "Viral_Pneumonia"),
        ("Lung_Opacity", "Lung_Opacity"),
        ("  Ödem / Schwellung  ", "Odem___Schwellung"),
        ("v1.2-final", "v1.2-final"),
        (".hidden", "hidden"),
        ("///", "unnamed"),
    ],
)
def test_safe_name(text, expected):
    assert safe_name(text) == expected
