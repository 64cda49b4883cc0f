"""The demo page (Gradio Blocks): one image, champion against challenger, a batch, the model card.

The page gets models and cards from a :class:`ModelSource`; it knows nothing of MLflow. Every
handler turns a bad upload or model URI into a message on the page (and logs unexpected errors
with their traceback on the server), so no request shows a stack trace or stops the app. Uploaded
files are read and deleted at once; results go back inline (images and the CSV as data URIs in the page), so nothing of a request is
written to disk or kept once it is answered.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import gradio as gr

from medtune.app.inference import LoadedModel, predict_batch, predict_image
from medtune.app.uploads import UploadError, read_batch
from medtune.errors import MedtuneError
from medtune.model_card import INTENDED_USE

log = logging.getLogger(__name__)

FORMATS = "JPEG, PNG, BMP, TIFF or WebP"


class ModelSource(Protocol):
    def choices(self) -> list[tuple[str, str]]:
        """(label, model URI) pairs for the model pickers."""

    def load(self, uri: str) -> LoadedModel:
        """The model behind ``uri``; raises MedtuneError with a one-line message."""

    def card(self, uri: str) -> str:
        """The model card (Markdown) of the version behind ``uri``."""


def take_upload(path: str | None) -> tuple[str, bytes]:
    """Read an uploaded file and delete it: the upload is not kept after the request."""
    if not path:
        raise UploadError(f"no file: upload a {FORMATS} image")
    p = Path(path)
    try:
        return p.name, p.read_bytes()
    finally:
        p.unlink(missing_ok=True)


def data_uri(image) -> str:
    """A uint8 RGB array as a PNG data URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figures_html(items: list[tuple[object, str]], css_class: str = "result") -> str:
    """Images side by side, each with its caption (escaped: file names come from users)."""
    cells = "".join(
        f'<figure class="{css_class}" style="display:inline-block;margin:4px 8px;vertical-align:top">'
        f'<img src="{data_uri(img)}" alt="{html.escape(caption)}" style="max-width:100%">'
        f'<figcaption style="font-size:0.85em">{html.escape(caption)}</figcaption></figure>'
        for img, caption in items
    )
    return f"<div>{cells}</div>"


def set_line(p) -> str:
    """The prediction set as a line of its own under the label (nothing for a model without sets)."""
    return f"\n\nprediction set: **{p.set_text}**" if p.set_text else ""


def csv_link(table) -> str:
    data = base64.b64encode(table.to_csv(index=False).encode("utf-8")).decode("ascii")
    return f'<a id="predictions-csv" download="predictions.csv" href="data:text/csv;base64,{data}">download predictions.csv</a>'


def _message(exc: Exception) -> str:
    if isinstance(exc, (UploadError, MedtuneError)):
        return f"**Could not use this input.** {exc}. medtune reads {FORMATS} images (a .zip of them in the batch tab)."
    log.exception("unexpected error in the demo")
    return f"**Something went wrong** ({type(exc).__name__}); the details are in the app's log. Try another file."


def _guarded(handler: Callable, n_outputs: int) -> Callable:
    """``handler`` whose errors become a message in the first output, the other outputs cleared."""

    def run(*args):
        try:
            return handler(*args)
        except Exception as exc:  # noqa: BLE001 - the page must answer, whatever happened
            return (_message(exc), *([None] * (n_outputs - 1)))

    run.__name__ = handler.__name__
    return run


def build_app(source: ModelSource, default_uri: str, compare_uri: str | None = None) -> gr.Blocks:
    """The demo page; ``default_uri`` is preselected, ``compare_uri`` on the compare tab's right side."""
    choices = source.choices()

    def picker(label: str, value: str) -> gr.Dropdown:
        return gr.Dropdown(choices=choices, value=value, label=label, allow_custom_value=True, filterable=True)

    def predict(path, uri):
        name, data = take_upload(path)
        loaded = source.load(uri)
        p = predict_image(loaded, data, name)
        return (
            f"**{p.label}** ({p.probabilities[p.label]:.1%}) from {loaded.title} for {name}{set_line(p)}",
            p.probabilities,
            figures_html([(p.original, name), (p.overlay, f"Grad-CAM of {p.label}")]),
            None,
        )

    def compare(path, uri_a, uri_b):
        name, data = take_upload(path)
        out = []
        for uri in (uri_a, uri_b):
            loaded = source.load(uri)
            p = predict_image(loaded, data, name)
            out += [
                f"**{loaded.title}**: {p.label} ({p.probabilities[p.label]:.1%}){set_line(p)}",
                p.probabilities,
                figures_html([(p.overlay, f"Grad-CAM of {p.label}")]),
            ]
        return ("", *out, None)

    def batch(paths, uri):
        uploaded = [Path(p) for p in paths or []]
        try:
            files = read_batch(uploaded)
        finally:
            for p in uploaded:
                p.unlink(missing_ok=True)
        if not files:
            raise UploadError(f"no file: upload {FORMATS} images or a .zip of them")
        loaded = source.load(uri)
        table, thumbnails = predict_batch(loaded, files)
        bad = int((table["error"] != "").sum())
        return (
            f"{len(table) - bad} images labelled by {loaded.title}, {bad} skipped (see the error column)."
            + (f" Prediction sets at {loaded.set_level * 100:g} % coverage." if loaded.set_level else ""),
            table,
            csv_link(table) + figures_html(thumbnails, "thumbnail"),
            None,
        )

    def card(uri):
        try:
            return source.card(uri)
        except Exception as exc:  # noqa: BLE001
            return _message(exc)

    # delete_cache: uploads no handler consumed (posted straight to /upload) leave the disk after 10 minutes
    with gr.Blocks(title="medtune demo", analytics_enabled=False, delete_cache=(600, 600)) as app:
        gr.Markdown("# medtune demo")
        gr.HTML(
            f'<div id="intended-use" style="background:#fff3cd;border:1px solid #e0b000;padding:8px 12px;'
            f'font-weight:600">{INTENDED_USE}</div>'
        )
        model = picker("model (any alias or version of a medtune-* registered model)", default_uri)
        with gr.Tabs():
            with gr.Tab("Image"):
                upload = gr.File(label=f"an image ({FORMATS})", type="filepath")
                message = gr.Markdown(elem_id="message")
                label = gr.Label(label="class probabilities")
                images = gr.HTML(elem_id="result-images")
                upload.upload(
                    _guarded(predict, 4), [upload, model], [message, label, images, upload], api_name="predict"
                )
            with gr.Tab("Champion vs challenger"):
                upload_c = gr.File(label=f"an image ({FORMATS})", type="filepath")
                message_c = gr.Markdown()
                sides = []
                with gr.Row():
                    for title, uri in (("left", default_uri), ("right", compare_uri or default_uri)):
                        with gr.Column():
                            sides.append(picker(f"{title} model", uri))
                            outputs = [gr.Markdown(), gr.Label(label="class probabilities"), gr.HTML()]
                            sides.append(outputs)
                upload_c.upload(
                    _guarded(compare, 8),
                    [upload_c, sides[0], sides[2]],
                    [message_c, *sides[1], *sides[3], upload_c],
                    api_name="compare",
                )
            with gr.Tab("Batch"):
                uploads = gr.File(label=f"{FORMATS} images, or a .zip of them", file_count="multiple", type="filepath")
                message_b = gr.Markdown()
                table = gr.Dataframe(label="predictions", interactive=False)
                thumbnails = gr.HTML(elem_id="batch-overlays")
                uploads.upload(
                    _guarded(batch, 4), [uploads, model], [message_b, table, thumbnails, uploads], api_name="batch"
                )
        with gr.Accordion("Model card of the chosen model", open=False):
            card_view = gr.Markdown(card(default_uri))
        model.change(card, model, card_view, api_name="card")
    return app
