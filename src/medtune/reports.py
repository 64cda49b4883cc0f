"""Figures from computed data: render only, each function returns a ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot, so
nothing is registered in pyplot's global figure list and no display is needed. Callers save
them with :func:`save_figure` (which also releases them). The data comes from
:mod:`medtune.metrics` (confusion matrices, ROC curves, reliability bins), from
:func:`medtune.explain.gradcam` (heatmaps), and from Keras ``History.history``.
"""

from __future__ import annotations

import math
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _label(name: str, width: int = 18, lines: int = 2) -> str:
    """Wrap a long class name to at most ``lines`` lines of ``width``, ending in an ellipsis."""
    wrapped = textwrap.wrap(str(name), width=width, break_long_words=True) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "…"
    return "\n".join(wrapped)


_SCORE_SUFFIX = re.compile(r"\s*(\([^()]*\)|[0-9.]+%?)$")


def _title(text: str, width: int = 30, lines: int = 3) -> str:
    """Wrap a title line by line (explicit newlines kept); a trailing score such as "(0.93)" or
    "0.93" survives truncation of a long class name before it."""
    out = []
    for line in str(text).split("\n"):
        match = _SCORE_SUFFIX.search(line)
        wrapped = _label(line, width, lines)
        if match and match.start() > 0 and not wrapped.endswith(match.group(0).strip()):
            body = _label(line[: match.start()], width, lines)
            wrapped = f"{body} {match.group(0).strip()}"
        out.append(wrapped)
    return "\n".join(out)


def _empty(message: str) -> Figure:
    fig = _figure(4, 2)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return fig


def _as_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image as imshow wants it: grey (H, W) with a grey colormap, or RGB scaled to [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    img = img.astype(np.float32)
    if img.size and float(img.max()) > 1.0:
        img = img / 255.0
    img = np.clip(img, 0.0, 1.0)
    return (img, "gray") if img.ndim == 2 else (img[..., :3], None)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG (dpi 100), creating parent folders, then release it.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # a figure made through pyplot: drop it from pyplot's registry
            pyplot.close(fig)
        fig.clear()
    return path


def learning_curves(history: Mapping[str, Sequence[float]]) -> Figure:
    """Train vs validation curves, one subplot per metric (``loss``, ``accuracy``, ...).

    Args:
        history: Keras ``History.history``: ``{"loss": [...], "val_loss": [...], ...}``.
            A ``val_`` key is drawn with its training twin; the learning rate gets its own plot.
    """
    names: list[str] = []
    for key, values in history.items():
        base = key[4:] if key.startswith("val_") else key
        if len(values) and base not in names:
            names.append(base)
    if not names:
        return _empty("no training history")
    names.sort(key=lambda n: (n != "loss", n in ("lr", "learning_rate")))
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(4.2 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "val", "--")):
            values = np.asarray(history.get(key, []), dtype=float)
            if len(values):
                ax.plot(np.arange(1, len(values) + 1), values, style, marker=".", label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    return fig


def confusion_matrix_figure(
    cm: np.ndarray,
    class_names: Sequence[str],
    normalize: bool = False,
    title: str = "",
) -> Figure:
    """Confusion matrix heatmap, rows true class, columns predicted, cells annotated.

    Args:
        cm: (K, K) counts, as from :func:`medtune.metrics.confusion`.
        class_names: K names; long ones are wrapped to two lines and truncated with "…".
        normalize: Show each row as fractions of its true class (empty rows stay 0).
        title: Figure title.
    """
    cm = np.asarray(cm, dtype=float)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(class_names)} names")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    else:
        values = cm
    side = max(5.0, 0.42 * k + 3.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    labels = [_label(n) for n in class_names]
    tick_size = 9 if k <= 10 else 7
    ax.set_xticks(range(k), labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=tick_size)
    ax.set_yticks(range(k), labels, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    cell_size = 9 if k <= 10 else (7 if k <= 20 else 6)
    threshold = values.max() / 2 if values.max() > 0 else 0.5
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            if v == 0 and k > 10:
                continue  # keep large matrices legible
            text = f"{v:.2f}" if normalize else f"{int(round(v))}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=cell_size, color="white" if v > threshold else "black"
            )
    return fig


def gradcam_grid(
    images: Sequence[np.ndarray],
    heatmaps: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int = 4,
    alpha: float = 0.4,
) -> Figure:
    """Images with their Grad-CAM heatmaps (jet, ``alpha``) laid over, in a grid.

    Args:
        images: (H, W[, C]) raw pixel images (0..255 or 0..1).
        heatmaps: (H', W') arrays in [0, 1], stretched over the image when sizes differ.
        titles: One title per image, e.g. ``"true X\npred Y (0.93)"``; each line is wrapped to
            at most 3 lines of 30 characters, a trailing score kept when a name is truncated.
        ncols: Images per row.
    """
    n = len(images)
    if n == 0:
        return _empty("no images")
    if len(heatmaps) != n or len(titles) != n:
        raise ValueError(f"{n} images, {len(heatmaps)} heatmaps, {len(titles)} titles")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _figure(2.8 * ncols, 3.1 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, image, heat, title in zip(axes, images, heatmaps, titles):
        img, cmap = _as_display(image)
        h, w = img.shape[:2]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        ax.imshow(img, cmap=cmap, extent=extent, vmin=0, vmax=1)
        ax.imshow(
            np.asarray(heat, dtype=float).squeeze(),
            cmap="jet",
            alpha=alpha,
            extent=extent,
            vmin=0,
            vmax=1,
            interpolation="bilinear",
        )
        ax.set_title(_title(title), fontsize=8)
        ax.set_axis_off()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig


def class_counts_figure(counts: Mapping[str, Mapping[str, int]]) -> Figure:
    """Horizontal grouped bars: images per class (rows) for each split (colours).

    Args:
        counts: ``{split: {class_name: count}}``, e.g. ``{"train": {...}, "val": {...}}``;
            classes missing from a split count 0.
    """
    splits = list(counts)
    classes: list[str] = []
    for per_class in counts.values():
        classes.extend(c for c in per_class if c not in classes)
    if not classes:
        return _empty("no images")
    k, s = len(classes), len(splits)
    fig = _figure(8.0, max(3.0, 0.32 * k * max(1, s) ** 0.5 + 1.5))
    ax = fig.add_subplot()
    height = 0.8 / s
    y = np.arange(k)
    for i, split in enumerate(splits):
        values = [int(counts[split].get(c, 0)) for c in classes]
        bars = ax.barh(y - 0.4 + height * (i + 0.5), values, height=height, label=split)
        ax.bar_label(bars, fontsize=6, padding=2)
    ax.set_yticks(y, [_label(c, width=30, lines=1) for c in classes], fontsize=9 if k <= 10 else 7)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.legend(fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def sample_grid(images_by_class: Mapping[str, Sequence[np.ndarray]], max_per_class: int = 8) -> Figure:
    """A few images of each class, one row per class, the class name on the left.

    Args:
        images_by_class: ``{class_name: [image, ...]}``, images (H, W[, C]) 0..255 or 0..1.
        max_per_class: Columns drawn at most.
    """
    rows = [(name, list(imgs)[:max_per_class]) for name, imgs in images_by_class.items()]
    if not rows:
        return _empty("no images")
    ncols = max(1, max(len(imgs) for _, imgs in rows))
    fig = _figure(1.6 * ncols + 1.8, 1.6 * len(rows))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(imgs):
                img, cmap = _as_display(imgs[c])
                ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[r, 0].set_ylabel(_label(name, width=16, lines=3), rotation=0, ha="right", va="center", fontsize=8)
    return fig


def roc_figure(curves: Mapping[int, tuple[np.ndarray, np.ndarray, float]], class_names: Sequence[str]) -> Figure:
    """One-vs-rest ROC curves, as from :func:`medtune.metrics.roc_curves`, with AUC in legend."""
    if not curves:
        return _empty("no ROC curve (fewer than two classes in y_true)")
    many = len(curves) > 10
    fig = _figure(9.5 if many else 6.5, 6.0)
    ax = fig.add_subplot()
    palette = colormaps["tab20"].colors if many else colormaps["tab10"].colors
    for i, (c, (fpr, tpr, auc)) in enumerate(sorted(curves.items())):
        name = class_names[c] if c < len(class_names) else str(c)
        style = ("-", "--", ":")[(i // len(palette)) % 3]
        ax.plot(
            fpr,
            tpr,
            style,
            lw=1.2,
            color=palette[i % len(palette)],
            label=f"{_label(name, width=24, lines=1)} ({auc:.3f})",
        )
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one vs rest (AUC)")
    if many:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1)
    else:
        ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def reliability_figure(bins: Mapping[str, np.ndarray]) -> Figure:
    """Reliability diagram from :func:`medtune.metrics.reliability_bins`.

    Top: accuracy per confidence bin against the diagonal (gaps shaded); bottom: samples per bin.
    """
    edges = np.asarray(bins["edges"], dtype=float)
    accuracy = np.asarray(bins["accuracy"], dtype=float)
    confidence = np.asarray(bins["confidence"], dtype=float)
    counts = np.asarray(bins["counts"], dtype=float)
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    filled = counts > 0
    fig = _figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(centers[filled], accuracy[filled], width=width[filled], edgecolor="k", label="accuracy")
    top.bar(
        centers[filled],
        confidence[filled] - accuracy[filled],
        bottom=accuracy[filled],
        width=width[filled],
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        label="gap",
    )
    top.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    ece = bins.get("ece")
    top.set_title("reliability" + (f" (ECE {float(ece):.3f})" if ece is not None else ""))
    top.legend(fontsize="small", loc="upper left")
    bottom.bar(centers, counts, width=width, color="tab:gray", edgecolor="k")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("samples")
    return fig
