"""medtune from Python (notebooks): the CLI's steps as functions, and a loaded model.

The functions run the very code paths of ``medtune split|search|train``: same options (with the
same ``None`` = sized-from-the-machine defaults), same MLflow runs, same one-line errors
(raised as :class:`medtune.errors.MedtuneError` instead of printed)::

    import medtune
    medtune.split("brain_mri")
    medtune.main("brain_mri", budget="1h")      # split, search, train, evaluate, gate: the best model in 1 hour
    medtune.search("brain_mri", trials=12)
    medtune.train("brain_mri")
    model = medtune.load("models:/medtune-brain_mri@champion")
    model.predict(["scan1.jpg", "scan2.jpg"])   # DataFrame: image, label, prob_<class>...
    model.explain("scan1.jpg")                  # PIL image: the Grad-CAM overlay
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Model", "load", "main", "search", "split", "train"]

_READY: dict[str, Any] = {}


def _ready(tracking_uri: str | None = None) -> None:
    """Logging (once, unless the notebook set it up), TensorFlow's noise down, the tracking store."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    for noisy in ("alembic", "mlflow.store.db", "absl", "PIL", "matplotlib", "optuna", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from medtune import tracking

    tracking.configure(tracking_uri)
    if "console" not in _READY:
        _READY["console"] = tracking.capture_console()


def split(dataset: str = "synthetic", *, new_run: bool = False, tracking_uri: str | None = None, **options):
    """Validate, de-duplicate, split and cache a dataset (``medtune split``); options as the CLI's,
    e.g. ``image_size=160, exclude_classes=("x",)``.

    Returns:
        A :class:`medtune.steps.split.SplitOutcome`: ``run_id``, ``result.report`` (counts,
        skipped and ignored files), ``cache``.
    """
    _ready(tracking_uri)
    from medtune.steps.split import SplitOptions, run_split

    return run_split(SplitOptions(dataset=dataset, **options), reuse_run=not new_run)


def search(dataset: str = "synthetic", *, tracking_uri: str | None = None, **options):
    """Hyperparameter search (``medtune search``); options as the CLI's, e.g. ``trials=12, engine="grid"``.

    Options left out come from the plan without a budget (see :mod:`medtune.planning.rules`).

    Returns:
        A :class:`medtune.steps.search.SearchOutcome`: ``run_id``, ``best`` (number, value,
        params), ``summaries`` of every trial.
    """
    _ready(tracking_uri)
    from medtune.steps.pipeline import search_with_split
    from medtune.steps.search import SearchOptions

    return search_with_split(SearchOptions(dataset=dataset, **options))


def train(dataset: str = "synthetic", *, tracking_uri: str | None = None, **options):
    """Final training of the best trial, test evaluation, registration and the @champion gate (``medtune train``).

    Returns:
        A :class:`medtune.steps.train.TrainOutcome`: ``run_id``, test ``metrics``,
        ``model_name``, ``model_version`` and the gate's ``decision``.
    """
    _ready(tracking_uri)
    from medtune.steps.pipeline import train_with_split
    from medtune.steps.train import TrainOptions

    return train_with_split(TrainOptions(dataset=dataset, **options))


def main(dataset: str = "synthetic", *, budget: str | float | None = None, tracking_uri: str | None = None, **options):
    """The whole pipeline (``medtune main``): split, search, final training, evaluation and the gate.

    ``budget``: wall-clock time for all of it (``"90m"``, ``"2h"`` or minutes); the plan sizes the
    search and final training from the data and the machine. Other options as the CLI's.

    Returns:
        A :class:`medtune.steps.pipeline.PipelineOutcome`: the step runs and ``train`` (test
        ``metrics``, the registered version and the gate's ``decision``).
    """
    _ready(tracking_uri)
    from medtune.planning.budget import parse_budget
    from medtune.steps.pipeline import PipelineOptions, run_pipeline

    return run_pipeline(PipelineOptions(dataset=dataset, budget=parse_budget(budget), **options))


def load(model_uri: str, *, tracking_uri: str | None = None) -> Model:
    """A logged medtune model: ``models:/medtune-<dataset>@champion``, ``runs:/<id>/model`` or a folder."""
    _ready(tracking_uri)
    from medtune.serving import load_keras_from_uri

    with tempfile.TemporaryDirectory() as tmp:
        keras_model, metadata = load_keras_from_uri(model_uri, Path(tmp))
    return Model(keras_model, metadata, model_uri)


class Model:
    """A loaded medtune classifier: images in, labels, probabilities and Grad-CAM out.

    Images are decoded and resized exactly as in training. An image may be a file path, encoded
    bytes, a PIL image or a uint8 array (H, W) / (H, W, 3).
    """

    def __init__(self, keras_model, metadata: dict, uri: str = ""):
        self.keras_model, self.metadata, self.uri = keras_model, metadata, uri
        self.classes: list[str] = list(metadata["classes"])
        self.image_size: int = int(metadata["image_size"])

    def __repr__(self) -> str:
        return f"<medtune.Model {self.uri or ''} classes={self.classes} image_size={self.image_size}>"

    def _pixels(self, image) -> np.ndarray:
        from medtune.datasets.images import decode_image

        if isinstance(image, np.ndarray) or hasattr(image, "save"):  # an array or a PIL image: via PNG
            from PIL import Image

            picture = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            image = buf.getvalue()
        return decode_image(
            image, self.image_size, int(self.metadata.get("channels", 3)), window=self.metadata.get("window")
        )

    def predict(self, images) -> Any:
        """Labels and class probabilities, one row per image (a pandas DataFrame).

        Columns: ``image`` (the path, or the position in ``images``), ``label``, ``prob_<class>``
        and, for a model with a conformal threshold, ``prediction_set``.
        """
        from medtune.serving import predictions_frame

        items = [images] if isinstance(images, (str, Path, bytes)) or _is_one_image(images) else list(images)
        x = (
            np.stack([self._pixels(item) for item in items])
            if items
            else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        )
        sets = self.metadata if self.metadata.get("conformal_threshold") is not None else None
        frame = predictions_frame(self.keras_model, x, self.classes, sets)
        frame.insert(0, "image", [str(i) if isinstance(i, (str, Path)) else n for n, i in enumerate(items)])
        return frame

    def explain(self, image, class_name: str | None = None):
        """The Grad-CAM overlay of one image, as a PIL image (shown inline in a notebook).

        Args:
            image: one image (see the class docstring).
            class_name: explain this class instead of the predicted one.
        """
        from PIL import Image

        from medtune.explain import gradcam, overlay

        x = self._pixels(image)[None]
        index = None if class_name is None else [self.classes.index(class_name)]
        heatmaps, _ = gradcam(self.keras_model, x, index)
        return Image.fromarray(overlay(x[0], heatmaps[0]))


def _is_one_image(value) -> bool:
    return hasattr(value, "save") or (
        isinstance(value, np.ndarray)
        and value.ndim in (2, 3)
        and value.dtype == np.uint8
        and (value.ndim == 2 or value.shape[-1] in (1, 3, 4))
    )
