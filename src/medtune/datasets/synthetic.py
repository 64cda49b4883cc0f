"""A procedural, offline dataset of MRI-like phantoms with one lesion each.

Every image shows a noisy grey "head" (bright skull rim, textured soft tissue, two dark
ventricles) and exactly one lesion. The class is given only by the lesion's shape and texture:

* ``crescent``: a bright moon-shaped sliver;
* ``disc``: a filled bright blob;
* ``ring``: a bright rim around a darker core;
* ``speckled``: a blob made of a coarse high-frequency speckle pattern.

Lesion position, size, elongation, orientation and contrast, head size, position and tilt, a
smooth bias field, global gain and offset and the Rician noise level are all drawn independently
of the class, so neither brightness nor position reveals it: a constant classifier sits at 25 %, a small CNN must learn the shapes. The lesion mask
(the lesion's elliptical footprint) is stored with the images so explainability can be checked
against the truth.

Images are drawn with elementwise numpy arithmetic only (no FFT, no BLAS), one independent
random stream per (seed, class, index), so a file does not depend on ``n_per_class`` and the
written files are byte-identical for a given seed on a given platform.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from medtune.errors import DataError

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("crescent", "disc", "ring", "speckled")
"""Class names, sorted (the order a folder scan returns them in)."""

GENERATOR_VERSION = 1
"""Bumped whenever the drawing changes, so cached datasets are regenerated."""

MARKER_NAME = ".medtune-synthetic.json"
LESIONS_NAME = "lesions.npz"
_MIN_SIZE = 16
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled ``cells x cells`` Gaussian noise: a smooth random field."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    pos = np.arange(size, dtype=np.float64) * (cells / size)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1.0 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1.0 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _box_blur(a: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge padding (shifted sums only)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    rows = p[0:h, :] + p[1 : h + 1, :] + p[2 : h + 2, :]
    return (rows[:, 0:w] + rows[:, 1 : w + 1] + rows[:, 2 : w + 2]) / 9.0


def _soft(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (distance < 0), 0 outside, a linear ramp ``edge`` (distance units) wide."""
    return np.clip(0.5 - signed_distance / edge, 0.0, 1.0)


def _ellipse_radius(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float
) -> np.ndarray:
    """Normalised elliptical radius: 1 on the boundary of the rotated ellipse."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return np.sqrt(u * u + v * v)


def _lesion_pattern(
    label: str,
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    r: float,
    aspect: float,
    angle: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The lesion's additive intensity pattern (roughly -0.5..1) and its footprint mask."""
    ry, rx = r * aspect, r / aspect
    rho = _ellipse_radius(yy, xx, cy, cx, ry, rx, angle)
    edge = 1.5 / r  # a ramp ~1.5 px wide, in normalised-radius units
    footprint = _soft(rho - 1.0, edge)
    mask = rho <= 1.0
    if label == "disc":
        pattern = footprint * (0.9 + 0.1 * rng.uniform())
    elif label == "ring":
        inner = rng.uniform(0.5, 0.62)
        core = _soft(rho - inner, edge)
        pattern = footprint - core * rng.uniform(1.1, 1.35)
    elif label == "speckled":
        grain = max(2, int(round(r / 3.0)))  # speckle cells of ~r/3 px: survive a 96 -> 64 resize
        cells = rng.uniform(size=(yy.shape[0] // grain + 2, yy.shape[1] // grain + 2))
        oy, ox = rng.integers(0, grain, size=2)
        idx_y = (np.arange(yy.shape[0]) + oy) // grain
        idx_x = (np.arange(yy.shape[1]) + ox) // grain
        speck = cells[idx_y][:, idx_x] > rng.uniform(0.4, 0.55)
        pattern = footprint * np.where(speck, 1.0, 0.05)
    elif label == "crescent":
        theta = rng.uniform(0.0, 2.0 * math.pi)
        shift = rng.uniform(0.35, 0.5)
        oy, ox = cy + shift * r * math.sin(theta), cx + shift * r * math.cos(theta)
        bite = _soft(_ellipse_radius(yy, xx, oy, ox, ry, rx, angle) - 0.95, edge)
        pattern = np.clip(footprint - bite, 0.0, 1.0)
    else:  # pragma: no cover - checked by the caller
        raise AssertionError(label)
    return pattern, mask


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def generate_phantom(label: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom.

    Args:
        label: one of :data:`CLASSES`.
        rng: the random stream to draw from (consumed).
        size: height and width in pixels (at least 16).

    Returns:
        ``(image, mask)``: a uint8 ``(size, size, 3)`` image (grey content repeated in the three
        channels) and a bool ``(size, size)`` mask of the lesion's footprint.

    Raises:
        DataError: unknown ``label`` or ``size`` too small.
    """
    if label not in CLASSES:
        raise DataError(f"generate_phantom: unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise DataError(f"generate_phantom: size must be an integer >= {_MIN_SIZE}, got {size!r}")
    size = int(size)
    yy, xx = _grid(size)

    # Head: a rotated, shifted ellipse, skull rim, brain with smooth + fine texture, ventricles.
    scale = rng.uniform(0.8, 1.0)
    hry, hrx = size * scale * rng.uniform(0.42, 0.46), size * scale * rng.uniform(0.32, 0.40)
    hangle = rng.uniform(-0.6, 0.6)
    c, s = math.cos(hangle), math.sin(hangle)
    extent_y, extent_x = math.hypot(hry * c, hrx * s), math.hypot(hrx * c, hry * s)  # of the rotated head
    hcy = size * 0.5 + rng.uniform(-1.0, 1.0) * max(size * 0.48 - extent_y, 0.0)
    hcx = size * 0.5 + rng.uniform(-1.0, 1.0) * max(size * 0.48 - extent_x, 0.0)
    head_rho = _ellipse_radius(yy, xx, hcy, hcx, hry, hrx, hangle)
    head_edge = 1.5 / min(hry, hrx)
    head = _soft(head_rho - 1.0, head_edge)
    skull_t = rng.uniform(0.06, 0.09)
    brain = _soft(head_rho - (1.0 - skull_t), head_edge)
    skull = head - brain

    tissue = 0.55 + 0.07 * _smooth_noise(rng, size, 5) + 0.05 * _box_blur(rng.standard_normal((size, size)))
    vent_dx = size * rng.uniform(0.05, 0.08)
    vent_ry, vent_rx = size * rng.uniform(0.09, 0.13), size * rng.uniform(0.025, 0.04)
    ventricles = np.zeros((size, size))
    for sign in (-1.0, 1.0):
        rho = _ellipse_radius(yy, xx, hcy, hcx + sign * vent_dx, vent_ry, vent_rx, hangle + sign * 0.3)
        ventricles = np.maximum(ventricles, _soft(rho - 1.0, 1.0 / vent_rx))
    image = skull * rng.uniform(0.85, 1.0) + brain * (tissue - 0.3 * ventricles)

    # Lesion: class-independent size, shape and position anywhere well inside the brain.
    r = size * rng.uniform(0.10, 0.16)
    aspect = rng.uniform(0.8, 1.25)
    angle = rng.uniform(0.0, math.pi)
    # A uniform point in the unit disc, mapped into the brain ellipse shrunk by the lesion's reach.
    rad, phi = math.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * math.pi)
    inner = 1.0 - skull_t
    reach_y = max(hry * inner - 1.3 * r - 1.0, 0.0)
    reach_x = max(hrx * inner - 1.3 * r - 1.0, 0.0)
    dy, dx = rad * math.sin(phi) * reach_y, rad * math.cos(phi) * reach_x
    cx, cy = hcx + dx * c - dy * s, hcy + dx * s + dy * c
    # Draw the lesion in a window around it only (it lies inside the brain, away from the edges).
    half = int(math.ceil(1.3 * r * 1.25)) + 2
    y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, size)
    x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, size)
    win = (slice(y0, y1), slice(x0, x1))
    pattern, lesion = _lesion_pattern(label, rng, yy[win], xx[win], cy, cx, r, aspect, angle)
    contrast = rng.uniform(0.45, 0.65)
    image[win] += contrast * pattern * brain[win]
    mask = np.zeros((size, size), dtype=bool)
    mask[win] = lesion

    # A smooth multiplicative bias field (coil inhomogeneity), global gain and offset, then
    # Rician (magnitude) noise as in real MRI. The bias field also keeps unrelated phantoms far
    # apart in perceptual hash, so near-duplicate detection does not group them.
    tilt = rng.uniform(0.0, 2.0 * math.pi)
    ramp = ((xx - size / 2) * math.cos(tilt) + (yy - size / 2) * math.sin(tilt)) / (size / 2)
    bias = 1.0 + rng.uniform(0.15, 0.3) * _smooth_noise(rng, size, 2) + rng.uniform(0.15, 0.35) * ramp
    image = image * np.clip(bias, 0.5, 1.5)
    gain = rng.uniform(0.75, 1.15)
    offset = rng.uniform(-0.04, 0.06)
    image = np.clip(image * gain + offset, 0.0, None)
    sigma = rng.uniform(0.02, 0.05)
    real = image + sigma * rng.standard_normal((size, size))
    imag = sigma * rng.standard_normal((size, size))
    image = np.sqrt(real * real + imag * imag)

    grey = np.clip(np.rint(image * 200.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), mask


def _stream(seed: int, class_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), GENERATOR_VERSION, class_index, index])


def generate(n_per_class: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n_per_class`` phantoms of every class, in class order.

    Image ``i`` of class ``c`` depends only on ``(seed, c, i)``, not on ``n_per_class``.

    Args:
        n_per_class: images per class (>= 1).
        size: height and width in pixels (>= 16).
        seed: the random seed.

    Returns:
        ``(images, labels, masks)``: uint8 ``(N, size, size, 3)``, int64 ``(N,)`` indices into
        :data:`CLASSES`, bool ``(N, size, size)``.

    Raises:
        DataError: ``n_per_class`` or ``size`` out of range.
    """
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise DataError(f"generate: n_per_class must be an integer >= 1, got {n_per_class!r}")
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise DataError(f"generate: size must be an integer >= {_MIN_SIZE}, got {size!r}")
    n, size = int(n_per_class) * len(CLASSES), int(size)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), int(n_per_class))
    for k in range(n):
        c, i = divmod(k, int(n_per_class))
        image, mask = generate_phantom(CLASSES[c], _stream(seed, c, i), size)
        images[k], masks[k] = image, mask
    return images, labels, masks


def _params(n_per_class: int, image_size: int, seed: int) -> dict:
    return {
        "generator": "medtune.datasets.synthetic",
        "version": GENERATOR_VERSION,
        "classes": list(CLASSES),
        "n_per_class": int(n_per_class),
        "image_size": int(image_size),
        "seed": int(seed),
    }


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``np.load``-able .npz with fixed zip timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _file_name(label: str, index: int) -> str:
    return f"{label}/{label}_{index:04d}.png"


def ensure_synthetic_dataset(root: Path, *, n_per_class: int = 120, image_size: int = 96, seed: int = 0) -> Path:
    """Write the phantom dataset under ``root`` unless it is already there with these parameters.

    Layout: ``root/<class>/<class>_0000.png`` ..., ``root/lesions.npz`` (arrays ``names``,
    ``labels``, ``masks``, ``bboxes`` as ``(y0, x0, y1, x1)`` exclusive ends) and a hidden marker
    file holding the parameters. PNGs are 8-bit greyscale (mode ``L``); they decode to exactly the
    arrays :func:`generate` returns. The dataset is built in a sibling temporary folder and
    renamed into place, so a killed run never leaves a half-written dataset; a dataset written
    with other parameters (or another generator version) is replaced.

    Args:
        root: the dataset folder.
        n_per_class: images per class.
        image_size: height and width in pixels.
        seed: the random seed.

    Returns:
        ``root``.

    Raises:
        DataError: bad parameters, or ``root`` exists and is not a synthetic dataset (it is never
            deleted then).
    """
    root = Path(root)
    params = _params(n_per_class, image_size, seed)
    if root.is_dir() and _read_marker(root) == params:
        logger.debug("synthetic dataset at %s is up to date", root)
        return root
    if root.exists() and not root.is_dir():
        raise DataError(f"ensure_synthetic_dataset: root {root} exists and is not a folder")
    if root.is_dir() and _read_marker(root) is None and any(root.iterdir()):
        raise DataError(
            f"ensure_synthetic_dataset: root {root} is not empty and holds no synthetic dataset; "
            "refusing to overwrite it"
        )
    images, labels, masks = generate(n_per_class, image_size, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        names = []
        for label in CLASSES:
            (tmp / label).mkdir()
        for k in range(len(images)):
            label = CLASSES[int(labels[k])]
            name = _file_name(label, k % int(n_per_class))
            # Grey content: stored as an 8-bit greyscale PNG (decodes to the same RGB array).
            Image.fromarray(np.ascontiguousarray(images[k][:, :, 0])).save(tmp / name, format="PNG", compress_level=6)
            names.append(name)
        ys, xs = masks.any(axis=2), masks.any(axis=1)
        bboxes = np.array(
            [[y.argmax(), x.argmax(), len(y) - y[::-1].argmax(), len(x) - x[::-1].argmax()] for y, x in zip(ys, xs)],
            dtype=np.int32,
        )
        _write_npz(
            tmp / LESIONS_NAME,
            {
                "names": np.array(names, dtype=np.str_),
                "labels": labels,
                "masks": masks,
                "bboxes": bboxes,
            },
        )
        (tmp / MARKER_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote synthetic dataset (%d images, %d px, seed %d) to %s", len(images), image_size, seed, root)
    return root


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``, replacing an outdated (or empty) ``root``."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if old is not None and not root.exists():
            os.rename(old, root)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_lesion_masks(root: Path) -> dict[str, np.ndarray]:
    """The lesion masks of a dataset written by :func:`ensure_synthetic_dataset`.

    Args:
        root: the dataset folder.

    Returns:
        ``{relative path: bool (H, W) mask}``, paths as written (``"disc/disc_0000.png"``,
        forward slashes).

    Raises:
        DataError: ``root`` holds no readable ``lesions.npz``.
    """
    path = Path(root) / LESIONS_NAME
    try:
        with np.load(path, allow_pickle=False) as data:
            names, masks = data["names"], data["masks"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"load_lesion_masks: cannot read {path}: {exc}") from exc
    return {str(name): masks[k] for k, name in enumerate(names)}
