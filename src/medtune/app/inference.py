"""What the demo computes for an upload: label, probabilities and Grad-CAM overlay. No UI, no tracking.

Images are decoded by :mod:`medtune.datasets.images`, the functions the training cache was built
with, so the model sees the pixels it would have seen in training.
"""

from __future__ import annotations

import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from medtune.datasets.images import ImageDecodeError, convert_mode, open_bytes, to_array
from medtune.errors import MedtuneError

DISPLAY_SIDE = 768  # the original and its overlay are shown at most this large (aspect kept)
THUMBNAIL_SIDE = 160
MAX_BATCH_IMAGES = 200
MAX_BATCH_BYTES = 512 * 2**20  # uncompressed, all files of one batch together
_GRADCAM = threading.Lock()  # Grad-CAM swaps a layer's call for one pass: one pass at a time


class UploadError(MedtuneError):
    """An upload the demo cannot use; the message names the file."""


@dataclass
class LoadedModel:
    uri: str
    title: str  # e.g. "medtune-synthetic v2 (@challenger)"
    model: object  # keras.Model
    metadata: dict

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])


@dataclass
class Prediction:
    name: str
    label: str
    probabilities: dict[str, float]
    original: np.ndarray  # uint8 RGB, at most DISPLAY_SIDE
    overlay: np.ndarray  # the same size, heatmap of the predicted class blended in


def predict_image(loaded: LoadedModel, data: bytes, name: str) -> Prediction:
    """Classify one encoded image and explain the predicted class with Grad-CAM.

    Raises:
        UploadError: the bytes are not a usable image (the message names ``name`` and why).
    """
    from medtune.explain import gradcam, overlay
    from medtune.training import predict_proba

    try:
        img = open_bytes(data, name)
        x = to_array(img, loaded.metadata["image_size"], loaded.metadata["channels"])[None]
        display = convert_mode(img, 3)
    except ImageDecodeError as exc:
        raise UploadError(f"{name}: {exc.reason}") from exc
    display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    original = np.asarray(display, dtype=np.uint8)
    with _GRADCAM:
        proba = predict_proba(loaded.model, x)[0].astype(float)
        heat, _ = gradcam(loaded.model, x, class_indices=[int(proba.argmax())])
    classes = loaded.classes
    return Prediction(
        name, classes[int(proba.argmax())], dict(zip(classes, proba.tolist())), original, overlay(original, heat[0])
    )


def read_batch(
    files: list[tuple[str, bytes]], max_images: int = MAX_BATCH_IMAGES, max_member_bytes: int = 50 * 2**20
) -> list[tuple[str, bytes]]:
    """Uploaded files with every zip archive replaced by the files inside it (folders flattened).

    Hidden entries and macOS resource forks are left out; a member larger than
    ``max_member_bytes`` uncompressed becomes an empty entry (reported as a zero-byte file).

    Raises:
        UploadError: a damaged zip, more than ``max_images`` files or :data:`MAX_BATCH_BYTES` in all.
    """
    out: list[tuple[str, bytes]] = []
    for name, data in files:
        if not zipfile.is_zipfile(io.BytesIO(data)):
            out.append((name, data))
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist():
                    path = PurePosixPath(info.filename)
                    if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in path.parts):
                        continue
                    member = archive.read(info) if info.file_size <= max_member_bytes else b""
                    out.append((f"{name}/{info.filename}", member))
                    if len(out) > max_images:
                        break
        except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:  # NotImplementedError: unknown compression
            raise UploadError(f"{name}: damaged or unsupported zip archive ({exc})") from exc
        if len(out) > max_images:
            break
    if len(out) > max_images:
        raise UploadError(f"more than {max_images} images in one batch: split it into smaller ones")
    if sum(len(d) for _, d in out) > MAX_BATCH_BYTES:
        raise UploadError(
            f"more than {MAX_BATCH_BYTES // 2**20} MiB of images in one batch: split it into smaller ones"
        )
    return out


def predict_batch(
    loaded: LoadedModel, files: list[tuple[str, bytes]]
) -> tuple[pd.DataFrame, list[tuple[np.ndarray, str]]]:
    """One table row per file (label and probabilities, or why it was skipped) and a thumbnail overlay per image."""
    from PIL import Image

    from medtune.metrics import safe_key

    def prob_column(cls: str) -> str:  # the pyfunc's column names
        return f"prob_{safe_key(cls)}"

    rows, thumbnails = [], []
    for name, data in files:
        try:
            p = predict_image(loaded, data, name)
        except UploadError as exc:
            rows.append({"file": name, "label": "", "confidence": np.nan, "error": str(exc).split(": ", 1)[-1]})
            continue
        rows.append(
            {
                "file": name,
                "label": p.label,
                "confidence": p.probabilities[p.label],
                "error": "",
                **{prob_column(c): v for c, v in p.probabilities.items()},
            }
        )
        thumb = Image.fromarray(p.overlay)
        thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        thumbnails.append((np.asarray(thumb), f"{name}: {p.label} {p.probabilities[p.label]:.0%}"))
    columns = ["file", "label", "confidence", *(prob_column(c) for c in loaded.classes), "error"]
    return pd.DataFrame(rows).reindex(columns=columns), thumbnails
