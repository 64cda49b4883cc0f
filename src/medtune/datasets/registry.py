"""Named datasets medtune knows, and where their files are found.

A named dataset is looked for, in order, in ``--data-dir``, in ``$MEDTUNE_DATA_DIR/<name>`` and
in ``./data/<name>`` (under the project folder). When none holds it, it is downloaded from Kaggle
with ``kagglehub`` into the first of these places, but only when www.kaggle.com answers within
a few seconds, so offline machines fail fast with one line saying where to put the files.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from medtune import settings
from medtune.errors import DataError, DatasetNotFound

logger = logging.getLogger(__name__)

KAGGLE_HOST = "www.kaggle.com"
NETWORK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class DatasetSpec:
    """A published dataset.

    Attributes:
        name: registry key, also the folder name under ``$MEDTUNE_DATA_DIR`` and ``./data``.
        classes: class folder names, exactly as published.
        kaggle_handle: ``owner/dataset`` on Kaggle, or ``None`` when not downloadable.
        subdir: folder inside the download that holds the dataset, when there is one.
        description: one line for listings.
        citation: what the dataset's authors ask users to cite.
    """

    name: str
    classes: tuple[str, ...]
    kaggle_handle: str | None
    subdir: str | None
    description: str
    citation: str = ""


@dataclass
class ResolvedDataset:
    """A dataset found on disk.

    Attributes:
        name: registry name, or a file-safe name made from the folder's name.
        root: the folder to pass to :func:`medtune.datasets.layout.detect_layout`.
        spec: the registry entry, ``None`` for a plain folder.
        downloaded: whether this call downloaded it.
    """

    name: str
    root: Path
    spec: DatasetSpec | None
    downloaded: bool = False


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="brain_mri",
            classes=("glioma", "meningioma", "notumor", "pituitary"),
            kaggle_handle="masoudnickparvar/brain-tumor-mri-dataset",
            subdir=None,
            description="Brain tumour MRI, 4 classes, Training/ and Testing/ JPEGs (~7,000).",
            citation="Msoud Nickparvar, Brain Tumor MRI Dataset, Kaggle (2021).",
        ),
        DatasetSpec(
            name="dermnet",
            classes=(
                "Acne and Rosacea Photos",
                "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions",
                "Atopic Dermatitis Photos",
                "Bullous Disease Photos",
                "Cellulitis Impetigo and other Bacterial Infections",
                "Eczema Photos",
                "Exanthems and Drug Eruptions",
                "Hair Loss Photos Alopecia and other Hair Diseases",
                "Herpes HPV and other STDs Photos",
                "Light Diseases and Disorders of Pigmentation",
                "Lupus and other Connective Tissue diseases",
                "Melanoma Skin Cancer Nevi and Moles",
                "Nail Fungus and other Nail Disease",
                "Poison Ivy Photos and other Contact Dermatitis",
                "Psoriasis pictures Lichen Planus and related diseases",
                "Scabies Lyme Disease and other Infestations and Bites",
                "Seborrheic Keratoses and other Benign Tumors",
                "Systemic Disease",
                "Tinea Ringworm Candidiasis and other Fungal Infections",
                "Urticaria Hives",
                "Vascular Tumors",
                "Vasculitis Photos",
                "Warts Molluscum and other Viral Infections",
            ),
            kaggle_handle="shubhamgoel27/dermnet",
            subdir=None,
            description="Dermnet skin disease photos, 23 imbalanced classes, train/ and test/ (~19,500).",
            citation="Dermnet (dermnet.com), via Kaggle shubhamgoel27/dermnet.",
        ),
        DatasetSpec(
            name="covid19_radiography",
            classes=("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"),
            kaggle_handle="tawsifurrahman/covid19-radiography-database",
            subdir="COVID-19_Radiography_Dataset",
            description="Chest X-rays, 4 classes, <class>/images/ PNGs (masks unused), no test split.",
            citation=(
                "Chowdhury et al., IEEE Access 8 (2020) 132665; "
                "Rahman et al., Computers in Biology and Medicine 132 (2021) 104319."
            ),
        ),
        DatasetSpec(
            name="synthetic",
            classes=(),
            kaggle_handle=None,
            subdir=None,
            description="Small generated images for tests and smoke runs; built on first use.",
        ),
    )
}


def safe_name(text: str) -> str:
    """Turn a class or dataset name into a file-, metric- and MLflow-key-safe name.

    Accents are dropped, runs of white space become ``_``, any other character outside letters,
    digits, ``_``, ``-`` and ``.`` becomes ``_``; leading dots and outer underscores are removed.
    Different names can map to the same key (``"a b"`` and ``"a_b"``); callers that need
    uniqueness must check.

    Args:
        text: any name, e.g. ``"Acne and Rosacea Photos"``.

    Returns:
        The safe name, e.g. ``"Acne_and_Rosacea_Photos"``; ``"unnamed"`` if nothing is left.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    out = re.sub(r"\s+", "_", ascii_text.strip())
    out = re.sub(r"[^A-Za-z0-9_.\-]", "_", out)
    out = out.lstrip(".").strip("_")
    return out or "unnamed"


def dataset_name(dataset: str) -> str:
    """The name a dataset's runs are logged under, found without touching its files.

    A registered name is itself; a folder gets the file-safe name of its last component (as
    :func:`resolve_dataset` gives it); any other name its file-safe form.
    """
    if dataset in DATASETS:
        return dataset
    as_path = Path(dataset).expanduser()
    if as_path.is_dir():
        return safe_name(as_path.resolve().name)
    return safe_name(dataset)


def network_available(host: str = KAGGLE_HOST, port: int = 443, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """Whether ``host:port`` answers within ``timeout`` seconds, through ``HTTPS_PROXY`` when one applies."""
    from medtune.network import reachable

    return reachable(host, port, timeout)


def _has_content(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())
    except OSError:
        return False


def _candidates(name: str, data_dir: str | Path | None) -> list[Path]:
    places = []
    if data_dir:
        places.append(Path(data_dir).expanduser())
    root = settings.data_root()
    if root is not None:
        places.append(root / name)
    places.append(settings.project_dir() / "data" / name)
    return places


def _with_subdir(folder: Path, spec: DatasetSpec | None) -> Path:
    if spec and spec.subdir and (folder / spec.subdir).is_dir():
        return folder / spec.subdir
    return folder


def _not_found(name: str, places: list[Path], handle: str | None, why: str) -> DatasetNotFound:
    where = ", ".join(str(p) for p in places)
    kaggle = f"; Kaggle dataset {handle}" if handle else ""
    hint = f"put its files in --data-dir, in $MEDTUNE_DATA_DIR/{name} or in ./data/{name}"
    return DatasetNotFound(f"dataset '{name}' not found ({why}): {hint} (looked in: {where}){kaggle}")


def resolve_dataset(
    dataset: str, data_dir: str | Path | None = None, *, allow_download: bool = True
) -> ResolvedDataset:
    """Find a dataset's folder, downloading a registered one from Kaggle if needed.

    Args:
        dataset: a registered name (see :data:`DATASETS`), or a path to a folder of images.
            Another name is looked for in the same places as registered ones.
        data_dir: the folder holding the dataset, looked at first.
        allow_download: whether a missing registered dataset may be downloaded.

    Returns:
        The dataset's name, folder and registry entry.

    Raises:
        DatasetNotFound: no folder holds it and it cannot be downloaded; the one-line message
            names the dataset, the places looked at and the Kaggle handle.
    """
    spec = DATASETS.get(dataset)
    if spec is not None and spec.name == "synthetic":
        from medtune.datasets.synthetic import ensure_synthetic_dataset

        root = Path(data_dir).expanduser() if data_dir else settings.cache_dir() / "synthetic"
        per_class, size = settings.synthetic_shape()
        try:
            root = ensure_synthetic_dataset(root, n_per_class=per_class, image_size=size)
        except DataError as exc:
            if not data_dir or not root.is_dir():
                raise
            # the usual cause: a folder of one's own images, with `dataset` left at its default
            raise DataError(
                f"{exc}. dataset=synthetic (the default) writes its phantoms into data_dir; "
                f"to use the images in {root}, name them: dataset=<a name> or dataset={root}"
            ) from exc
        return ResolvedDataset(name="synthetic", root=Path(root), spec=spec)

    if spec is None:
        as_path = Path(dataset).expanduser()
        if as_path.is_dir():
            return ResolvedDataset(name=safe_name(as_path.resolve().name), root=as_path, spec=None)

    name = spec.name if spec else safe_name(dataset)
    places = _candidates(name, data_dir)
    if data_dir and not _has_content(places[0]):
        logger.warning("--data-dir %s is missing or empty; looking elsewhere for '%s'", data_dir, name)
    for place in places:
        if _has_content(place):
            logger.info("dataset '%s' found in %s", name, place)
            return ResolvedDataset(name=name, root=_with_subdir(place, spec), spec=spec)

    if spec is None:
        known = ", ".join(sorted(DATASETS))
        raise DatasetNotFound(
            f"dataset '{dataset}' is neither a registered name ({known}) nor a folder; "
            f"looked in: {', '.join(str(p) for p in places)}"
        )
    if not spec.kaggle_handle:
        raise _not_found(name, places, None, "not downloadable")
    if not allow_download:
        raise _not_found(name, places, spec.kaggle_handle, "download not allowed")
    if not network_available():
        from medtune.network import route

        raise _not_found(name, places, spec.kaggle_handle, f"no network to {route(KAGGLE_HOST)}")
    return _download(spec, places)


def _download(spec: DatasetSpec, places: list[Path]) -> ResolvedDataset:
    target = places[0]
    logger.info("downloading Kaggle dataset %s into %s", spec.kaggle_handle, target)
    try:
        import kagglehub

        target.parent.mkdir(parents=True, exist_ok=True)
        path = Path(kagglehub.dataset_download(spec.kaggle_handle, output_dir=str(target)))
    except Exception as exc:  # auth, HTTP, disk: all end as one actionable line
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise _not_found(spec.name, places, spec.kaggle_handle, f"download failed: {reason}") from exc
    return ResolvedDataset(name=spec.name, root=_with_subdir(path, spec), spec=spec, downloaded=True)
