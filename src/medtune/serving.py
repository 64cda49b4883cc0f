"""The model as MLflow serves it: encoded image bytes in, label and class probabilities out.

The pyfunc decodes with :func:`medtune.datasets.images.decode_image`, the very function the
split cache was built with, and DICOM with the split's window (``metadata["window"]``), so serving
sees pixels exactly as training did.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

INTENDED_USE = (
    "Research use only. Not a medical device and not for diagnosis, triage or treatment decisions; "
    "outputs must be reviewed by qualified clinicians and validated on local data before any use."
)
KERAS_ARTIFACT = "keras_model"
# Limits of one request to the served model (each breach is a 400 with one line; README "Serving"):
MAX_ROWS = 256  # images per request to `mlflow models serve` (in-process predict takes any number)
MAX_IMAGE_BYTES = 20 * 2**20  # encoded bytes of one image
MAX_IMAGE_PIXELS = 40_000_000  # width x height of one decoded image (a 6000 x 6000 photo is 36 MP)
METADATA_ARTIFACT = "metadata"
CHUNK_ROWS = 64  # images decoded and predicted at a time: memory stays bounded however many rows come
# Set by MLflow's scoring server (`mlflow models serve`, `mlflow models predict`) in its process, never by
# `mlflow.pyfunc.load_model` or `spark_udf(env_manager="local")`: the per-request limits hold only there.
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


def prob_column(cls: str) -> str:
    from medtune.metrics import safe_key

    return f"prob_{safe_key(cls)}"


def build_metadata(
    classes,
    image_size: int,
    channels: int,
    *,
    temperature: float = 1.0,
    conformal_level: float = 0.9,
    conformal_threshold: float | None = None,  # None: sets of the top class alone (see medtune.calibration)
    window: str | None = None,
    **extra,
) -> dict:
    import medtune
    from medtune.datasets.dicom import window_label

    return {
        "classes": list(classes),
        "image_size": int(image_size),
        "channels": int(channels),
        "window": window_label(window),  # DICOM bytes are decoded with the split's window
        "input": "DataFrame with an 'image' column of encoded image bytes (JPEG, PNG, BMP, TIFF, WebP, DICOM)",
        "output": ["label"] + [prob_column(c) for c in classes] + ["prediction_set"],
        "intended_use": INTENDED_USE,
        "temperature": float(temperature),
        "conformal_level": float(conformal_level),
        "conformal_threshold": conformal_threshold,
        "medtune_version": medtune.__version__,
        "git_commit": git_commit(),
        **extra,
    }


def git_commit() -> str:
    """``git describe --always --dirty`` of the medtune checkout, or "unknown" for an installed package."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


def _input_error_base():
    from mlflow.exceptions import MlflowException

    return MlflowException


class ImageInputError(_input_error_base(), ValueError):
    """Bad pyfunc input (no ``image`` column, undecodable bytes).

    An :class:`~mlflow.exceptions.MlflowException` with ``INVALID_PARAMETER_VALUE``, so the REST
    scoring server answers 400 with this message (instead of a generic "unexpected error" and a
    stack trace); also a ``ValueError`` for in-process callers.
    """

    def __init__(self, message: str):
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    # MLflow's scoring server rewrites ``message`` as "Failed to predict data '<the whole input
    # DataFrame>'. Error: ...": a long multi-line answer that echoes the client's images back.
    # The first message set (medtune's one line) is the one kept.
    @property
    def message(self) -> str:
        return self._one_line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_one_line"):
            self._one_line = " ".join(str(value).split())


class ImageClassifier(_pyfunc_base()):
    """MLflow pyfunc wrapping a Keras classifier that takes raw 0..255 pixels."""

    def load_context(self, context):
        import keras

        import medtune.models.layers  # noqa: F401 - registers the layers transfer models contain

        self.metadata = json.loads(Path(context.artifacts[METADATA_ARTIFACT]).read_text())
        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    # The pd.DataFrame hint tells MLflow not to build a type-hint schema (the logged signature
    # is the schema) and silences its "Add type hints to the `predict` method" warning, which
    # MLflow emits under its own warning filter, so a filter of ours cannot hide it.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ARG002
        from medtune.datasets.images import ImageDecodeError, decode_image

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            raise ImageInputError(
                f"input needs an 'image' column of encoded image bytes (got columns {list(frame.columns)})"
            )
        if len(frame) > MAX_ROWS and os.environ.get(SERVING_ENV, "").lower() in ("true", "1"):
            raise ImageInputError(f"{len(frame)} images in one request: at most {MAX_ROWS}")
        size, channels, window = self.metadata["image_size"], self.metadata["channels"], self.metadata.get("window")
        parts = []
        for start in range(0, max(len(frame), 1), CHUNK_ROWS):
            images = []
            for i, value in enumerate(frame["image"].iloc[start : start + CHUNK_ROWS], start):
                data = _as_bytes(value, i)
                if len(data) > MAX_IMAGE_BYTES:
                    raise ImageInputError(f"row {i}: {len(data)} bytes: at most {MAX_IMAGE_BYTES} per image")
                try:
                    images.append(decode_image(data, size, channels, max_pixels=MAX_IMAGE_PIXELS, window=window))
                except ImageDecodeError as exc:
                    raise ImageInputError(f"row {i}: cannot decode image ({exc.reason})") from exc
            x = np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)
            parts.append(predictions_frame(self.model, x, self.metadata["classes"], self.metadata))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _as_bytes(value, row: int = 0) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):  # base64 text, as JSON clients send it
        import base64
        import binascii

        if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:  # refused before decoding
            raise ImageInputError(
                f"row {row}: {len(value)} base64 characters: at most {MAX_IMAGE_BYTES} bytes per image"
            )
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageInputError(f"row {row}: a text value must be base64-encoded image bytes ({exc})") from exc
    raise ImageInputError(f"row {row}: expected encoded image bytes, got {type(value).__name__}")


def predictions_frame(model, images: np.ndarray, classes, metadata: dict | None = None) -> pd.DataFrame:
    """``label`` and ``prob_<class>`` per image; with the model's ``metadata``, also its ``prediction_set``.

    Keras ``predict`` on the uint8 array: TensorFlow casts each batch, so no float32 copy of the
    whole request is made in Python. The network runs with its BatchNorm folded (the same
    probabilities, :func:`medtune.models.folding.inference_view`).
    """
    from medtune.models.folding import inference_view

    if len(images):
        proba = np.asarray(inference_view(model).predict(images, batch_size=64, verbose=0), dtype=np.float32)
    else:
        proba = np.zeros((0, len(classes)), np.float32)
    frame = pd.DataFrame({"label": [classes[i] for i in proba.argmax(1)] if len(proba) else []})
    for j, cls in enumerate(classes):
        frame[prob_column(cls)] = proba[:, j].astype(float) if len(proba) else []
    if metadata is not None:
        from medtune.calibration import prediction_set

        frame["prediction_set"] = prediction_set(proba, list(classes), metadata) if len(proba) else []
    return frame


def log_model(
    model,
    metadata: dict,
    *,
    example_images: list[bytes] | None = None,
    registered_model_name: str | None = None,
    name: str = "model",
):
    """Log the Keras model as a pyfunc with signature, input example and metadata.

    The input example is ``example_images`` (at most two) or, by default, two generated images: a
    registered model must not carry patient data.
    """
    import tempfile

    import mlflow
    from mlflow.models import infer_signature

    import medtune

    with tempfile.TemporaryDirectory() as tmp:
        keras_path = Path(tmp) / "model.keras"
        model.save(keras_path)
        meta_path = Path(tmp) / "metadata.json"
        meta_path.write_text(json.dumps(metadata, indent=2))
        example_images = list((example_images or [])[:2]) or generated_examples(int(metadata["image_size"]))
        example = pd.DataFrame({"image": example_images})
        output = predictions_frame(model, _decode_all(example_images, metadata), metadata["classes"], metadata)
        signature = infer_signature(example, output)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(medtune.__file__).parent / "pyfunc_model.py"),
            artifacts={KERAS_ARTIFACT: str(keras_path), METADATA_ARTIFACT: str(meta_path)},
            signature=signature,
            input_example=example,
            code_paths=[str(Path(medtune.__file__).parent)],
            pip_requirements=_requirements(),
            metadata={k: v for k, v in metadata.items() if isinstance(v, (str, int, float, list))},
            registered_model_name=registered_model_name,
        )
    return info


def generated_examples(size: int) -> list[bytes]:
    """Two made-up PNG images (a radial gradient and its negative): an input example without patient data."""
    import io

    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1) - 0.5
    disc = (255 * np.clip(1 - 2 * np.hypot(xx, yy), 0, 1)).astype(np.uint8)
    out = []
    for image in (disc, 255 - disc):
        buf = io.BytesIO()
        Image.fromarray(image, "L").convert("RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _decode_all(images: list[bytes], metadata: dict) -> np.ndarray:
    from medtune.datasets.images import decode_image

    size, channels, window = metadata["image_size"], metadata["channels"], metadata.get("window")
    return np.stack([decode_image(b, size, channels, window=window) for b in images])


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pkgs = ["mlflow", "keras", "numpy", "pandas", "pillow", "scikit-learn", "imagehash", "pyyaml", "click", "pydicom"]
    reqs = [f"{p}=={version(p)}" for p in pkgs]
    try:
        reqs.append(f"tensorflow-cpu=={version('tensorflow-cpu')}")
    except Exception:
        reqs.append(f"tensorflow=={version('tensorflow')}")
    for decoder in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"):  # the dicom-compressed extra, if here
        try:
            reqs.append(f"{decoder}=={version(decoder)}")
        except PackageNotFoundError:
            pass
    return reqs


def load_keras_from_uri(model_uri: str, dst: Path):
    """Download a logged medtune model and return (keras model, metadata).

    An unknown URI is a one-line error naming it and what the store holds, before TensorFlow loads.
    """
    import mlflow

    from medtune import tracking

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise tracking.model_lookup_error(model_uri, exc) from exc
    keras_file = next(local.rglob("model.keras"), None)
    meta_file = next(local.rglob("metadata.json"), None)
    if keras_file is None or meta_file is None:
        from medtune.errors import ConfigError

        raise ConfigError(f"model_uri={model_uri}: not a medtune model (no model.keras/metadata.json inside)")
    import keras

    import medtune.models.layers  # noqa: F401 - registers the layers transfer models contain

    return keras.models.load_model(keras_file, compile=False), json.loads(meta_file.read_text())


def predict_on_split(model_uri: str, split, test) -> np.ndarray | None:
    """The classes a registered model predicts for ``test``'s images (in their order), at its own image size.

    None when it cannot be scored there (other classes or channels): the gate then keeps the champion
    and makes the new version the challenger.
    """
    from medtune.evaluation import manifest_test_set
    from medtune.tracking.splits import load_split
    from medtune.training import predict_proba

    with tempfile.TemporaryDirectory() as tmp:
        model, meta = load_keras_from_uri(model_uri, Path(tmp))
    if list(meta.get("classes", [])) != list(split.classes) or int(meta.get("channels", 3)) != test.x.shape[-1]:
        log.warning(
            "%s predicts %s from %s channel(s): it cannot be scored on this split",
            model_uri,
            meta.get("classes"),
            meta.get("channels"),
        )
        return None
    x, size = test.x, int(meta.get("image_size", 0))
    if size != test.x.shape[1]:  # the same test images, cached at the model's own size
        other = manifest_test_set(load_split(split.dataset, size, split_run=split.run_id))
        where = {path: i for i, path in enumerate(other.paths)}
        if sorted(where) != sorted(test.paths):
            return None
        x = other.x[[where[path] for path in test.paths]]
    return predict_proba(model, x).argmax(1)
