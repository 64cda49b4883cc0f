"""What the demo computes for an upload: label, probabilities and Grad-CAM overlay. No UI, no tracking.

Images are decoded by :mod:`medtune.datasets.images`, the functions the training cache was built
with, so the model sees the pixels it would have seen in training.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtune.app.uploads import UploadError
from medtune.datasets.images import ImageDecodeError, convert_mode, open_bytes, to_array
from medtune.serving import MAX_IMAGE_PIXELS, prob_column

DISPLAY_SIDE = 768  # the original and its overlay are shown at most this large (aspect kept)
THUMBNAIL_SIDE = 160
_GRADCAM = threading.Lock()  # Grad-CAM swaps a layer's call for one pass: one pass at a time


@dataclass
class LoadedModel:
    uri: str
    title: str  # e.g. "medtune-synthetic v2 (@challenger)"
    model: object  # keras.Model
    metadata: dict

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def set_level(self) -> float | None:
        """The coverage of the model's prediction sets; None for a model without a conformal threshold."""
        return self.metadata.get("conformal_level") if self.metadata.get("conformal_threshold") is not None else None


@dataclass
class Prediction:
    name: str
    label: str
    probabilities: dict[str, float]
    original: np.ndarray  # uint8 RGB, at most DISPLAY_SIDE
    overlay: np.ndarray  # the same size, heatmap of the predicted class blended in
    prediction_set: list[str] | None = None  # most probable first; None: the model has no conformal threshold
    set_level: float | None = None

    @property
    def set_names(self) -> str:
        """E.g. "glioma or meningioma"; empty without a set."""
        *others, last = self.prediction_set or [""]
        return f"{', '.join(others)} or {last}" if others else last

    @property
    def set_text(self) -> str:
        """E.g. "glioma or meningioma (90 % set)"; empty without a set."""
        return f"{self.set_names} ({self.set_level * 100:g} % set)" if self.prediction_set else ""


def predict_image(loaded: LoadedModel, data: bytes, name: str) -> Prediction:
    """Classify one encoded image and explain the predicted class with Grad-CAM.

    Raises:
        UploadError: the bytes are not a usable image (the message names ``name`` and why).
    """
    from medtune.calibration import prediction_set
    from medtune.explain import gradcam, overlay
    from medtune.training import predict_proba

    try:
        img = open_bytes(  # refused from the header, before decoding; DICOM with the model's window
            data, name, max_pixels=MAX_IMAGE_PIXELS, window=loaded.metadata.get("window")
        )
        x = to_array(img, loaded.metadata["image_size"], loaded.metadata["channels"])[None]
        display = convert_mode(img, 3)
    except ImageDecodeError as exc:
        raise UploadError(f"{name}: {exc.reason}") from exc
    display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    original = np.asarray(display, dtype=np.uint8)
    with _GRADCAM:
        proba = predict_proba(loaded.model, x)[0].astype(float)
        heat, _ = gradcam(loaded.model, x, class_indices=[int(proba.argmax())])
    classes, level = loaded.classes, loaded.set_level
    return Prediction(
        name,
        classes[int(proba.argmax())],
        dict(zip(classes, proba.tolist())),
        original,
        overlay(original, heat[0]),
        prediction_set(proba, classes, loaded.metadata)[0] if level else None,
        level,
    )


def predict_batch(
    loaded: LoadedModel, files: list[tuple[str, bytes]]
) -> tuple[pd.DataFrame, list[tuple[np.ndarray, str]]]:
    """One table row per file (label and probabilities, or why it was skipped) and a thumbnail overlay per image."""
    from PIL import Image

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
                "prediction_set": p.set_names,
                "confidence": p.probabilities[p.label],
                "error": "",
                **{prob_column(c): v for c, v in p.probabilities.items()},
            }
        )
        thumb = Image.fromarray(p.overlay)
        thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        thumbnails.append((np.asarray(thumb), f"{name}: {p.label} {p.probabilities[p.label]:.0%}"))
    sets = ["prediction_set"] if loaded.set_level else []  # none for a model logged before medtune had them
    columns = ["file", "label", *sets, "confidence", *(prob_column(c) for c in loaded.classes), "error"]
    return pd.DataFrame(rows).reindex(columns=columns), thumbnails
