"""``medtune predict``: label image files with a logged model, optionally with Grad-CAM overlays."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

log = logging.getLogger(__name__)

BATCH = 64


@dataclass
class PredictOutcome:
    n_ok: int
    bad: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(inputs: list[str], exclude: list[str | Path] = ()) -> list[Path]:
    """Files as given; folders walked recursively (hidden files and checkpoints left out).

    ``exclude``: files and folders to leave out of the walk (this command's own CSV and overlay
    folder, when they lie inside an input folder: a second run must not read them as images).
    """
    skip = [Path(e).resolve() for e in exclude if e]
    out: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = [
                f
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and not any(f.resolve() == s or s in f.resolve().parents for s in skip)
            ]
        else:
            files = [p]  # named explicitly: always tried
        for f in files:
            if f.resolve() not in seen:  # a file named twice (or in two given folders) once
                seen.add(f.resolve())
                out.append(f)
    return out


def _overlay_name(f: Path, used: set[str]) -> str:
    """``<stem>_gradcam.png``, numbered when two inputs share a stem (a/x.png, b/x.jpg)."""
    from medtune.datasets.registry import safe_name

    base = safe_name(f.stem)
    name, k = f"{base}_gradcam.png", 1
    while name in used:
        k += 1
        name = f"{base}_{k}_gradcam.png"
    used.add(name)
    return name


def run_predict(model_uri: str, inputs: list[str], output: str, gradcam_dir: str | None = None) -> PredictOutcome:
    from PIL import Image

    from medtune.datasets.images import ImageDecodeError, decode_image
    from medtune.serving import load_keras_from_uri, predictions_frame

    with tempfile.TemporaryDirectory() as tmp:
        model, meta = load_keras_from_uri(model_uri, Path(tmp))
    classes, size, channels = meta["classes"], meta["image_size"], meta["channels"]
    sets = meta if meta.get("conformal_threshold") is not None else None  # a prediction set when the model has one
    files = expand_inputs(inputs, exclude=[output, gradcam_dir])
    outcome = PredictOutcome(0)
    frames = []
    used: set[str] = set()
    if gradcam_dir:
        Path(gradcam_dir).mkdir(parents=True, exist_ok=True)
    with click.progressbar(length=len(files), label="predicting", file=None) as bar:
        for start in range(0, len(files), BATCH):
            chunk, images = [], []
            for f in files[start : start + BATCH]:
                try:
                    images.append(decode_image(f, size, channels, window=meta.get("window")))
                    chunk.append(f)
                except ImageDecodeError as exc:
                    outcome.bad.append((str(f), exc.reason))
                    log.warning("skipped %s: %s", f, exc.reason)
            bar.update(len(files[start : start + BATCH]))
            if not chunk:
                continue
            x = np.stack(images)
            frame = predictions_frame(model, x, classes, sets)
            frame.insert(0, "path", [str(f) for f in chunk])
            frames.append(frame)
            if gradcam_dir:
                from medtune.explain import gradcam, overlay

                heatmaps, _ = gradcam(model, x)  # the predicted class of each image
                names = []
                for f, img, hm in zip(chunk, x, heatmaps):
                    names.append(_overlay_name(f, used))
                    Image.fromarray(overlay(img, hm)).save(Path(gradcam_dir) / names[-1])
                frame["gradcam"] = [str(Path(gradcam_dir) / n) for n in names]
            outcome.n_ok += len(chunk)
    import pandas as pd

    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "label"])
    if "prediction_set" in result:  # one cell: the classes, most probable first
        result["prediction_set"] = [" | ".join(s) for s in result["prediction_set"]]
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(output, index=False)
    return outcome
