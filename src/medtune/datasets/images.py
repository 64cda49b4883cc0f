"""The one image decoding medtune uses everywhere: validation, cache building, serving, predict.

Every image goes through :func:`open_image` (full decode, EXIF orientation, format detected by
content, DICOM through :mod:`medtune.datasets.dicom`, decompression bombs and truncated files
refused), then :func:`convert_mode` (any PIL mode to ``RGB`` or ``L`` with explicit scaling
rules) and :func:`to_array` (square resize to ``uint8``). :func:`decode_image` chains the three; :func:`decode_many` does it for a list of
files in a process pool.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from medtune.errors import DataError

logger = logging.getLogger(__name__)

#: Largest image accepted, in pixels (width x height). Larger files are refused as
#: decompression bombs. PIL's own ``Image.MAX_IMAGE_PIXELS`` (default 89,478,485) applies too
#: when it is smaller; its warning is treated as an error.
MAX_PIXELS = 90_000_000

#: Start method of the worker pools. ``spawn`` is safe when the parent has already imported
#: TensorFlow (forking a process that runs threads can deadlock).
MP_START_METHOD = "spawn"


def worker_pool(workers: int):
    """A ``spawn`` pool whose workers do not run the user's script again.

    A spawned worker imports the parent's ``__main__`` file before working; a script without an
    ``if __name__ == "__main__":`` guard (a notebook saved as a script, calling ``medtune.split``
    at top level) would then split again in every worker, and the pool never start. The workers
    only run medtune's own functions, so the file is hidden from them while they start.
    """
    import sys

    main = sys.modules.get("__main__")
    hidden = None
    if main is not None and getattr(main, "__spec__", None) is None and getattr(main, "__file__", None):
        hidden = main.__file__
        del main.__file__
    try:
        return multiprocessing.get_context(MP_START_METHOD).Pool(workers)
    finally:
        if hidden is not None:
            main.__file__ = hidden


#: Below this many files, :func:`decode_many` decodes in-process (a pool costs ~1 s to start).
MIN_FILES_FOR_POOL = 64

_RGB_LIKE = {"RGB", "RGBX", "YCbCr", "CMYK", "LAB", "HSV"}
_GREY_MODES = {"1", "L", "LA", "La", "I", "F"}


class ImageDecodeError(DataError):
    """A file or byte string is not a usable image.

    Attributes:
        reason: short cause, e.g. ``"zero-byte file"``, ``"truncated image"``, ``"not an image"``,
            ``"decompression bomb (N pixels)"``, ``"unreadable: <error>"``.
        path: the file at fault, when known.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)

    def __reduce__(self):  # keep `reason` and `path` across process boundaries
        return (type(self), (self.reason, self.path))


def _read_source(source: str | Path | bytes) -> tuple[bytes, str | None]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    name = str(source)
    try:
        with open(name, "rb") as fh:
            return fh.read(), name
    except OSError as exc:
        raise ImageDecodeError(f"unreadable: {exc.strerror or exc}", name) from exc


def open_bytes(
    data: bytes,
    name: str | None = None,
    *,
    draft_size: int | None = None,
    max_pixels: int | None = None,
    window: str | tuple[float, float] | None = None,
) -> Image.Image:
    """Decode image bytes fully; see :func:`open_image`.

    Args:
        data: the encoded file content.
        name: file name used in error messages only (the format comes from the content).
        draft_size: for JPEGs only, let the decoder downscale by a power of two while keeping
            both sides at least this many pixels (fast path for cache building, not validation).
        max_pixels: a lower limit than :data:`MAX_PIXELS`.
        window: for grey DICOM files, ``center,width`` instead of the file's own window
            (see :mod:`medtune.datasets.dicom`); other formats ignore it.

    Returns:
        A loaded image, EXIF orientation applied, in its original PIL mode (DICOM: ``L`` or ``RGB``).

    Raises:
        ImageDecodeError: the bytes are empty, not an image, truncated, too large or unreadable.
    """
    if not data:
        raise ImageDecodeError("zero-byte file", name)
    from medtune.datasets import dicom  # lazy: it imports this module

    if dicom.is_dicom(data):
        return dicom.decode(data, name, window=window, max_pixels=min(_pixel_limit(), max_pixels or MAX_PIXELS))
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG passes verify(); only load() tells
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            pixels = img.size[0] * img.size[1]
            if pixels > min(
                _pixel_limit(), max_pixels or MAX_PIXELS
            ):  # also what a racing thread's filters let through
                raise ImageDecodeError(f"decompression bomb ({pixels} pixels)", name)
            if draft_size and img.format == "JPEG":
                img.draft(None, (draft_size, draft_size))
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"decompression bomb ({_pixels_of(exc)})", name) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image", name) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        text = str(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise ImageDecodeError("truncated image", name) from exc
        raise ImageDecodeError(f"unreadable: {_one_line(text)}", name) from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good image
        logger.warning("%s: EXIF orientation ignored (%s)", name or "<bytes>", _one_line(str(exc)))
    return img


def open_image(source: str | Path | bytes, *, window: str | tuple[float, float] | None = None) -> Image.Image:
    """Open and fully decode one image.

    The format is detected from the content, not the extension (a PNG named ``.jpg``, a ``.JPG``
    file or a DICOM file without extension read fine). The whole image is decoded (``load()``),
    so truncated files are caught; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is held ``False``
    meanwhile. EXIF orientation is applied, so width and height are those a viewer shows.
    Multi-frame files give their first frame, except DICOM, whose multi-frame files are refused
    (:class:`medtune.datasets.dicom.DicomSkipped`).

    Args:
        source: a file path, or the encoded bytes.
        window: a DICOM window ``center,width`` (see :func:`open_bytes`).

    Returns:
        The loaded image in its original PIL mode (see :func:`convert_mode`).

    Raises:
        ImageDecodeError: zero-byte file, not an image, truncated, larger than
            :data:`MAX_PIXELS`, or unreadable; ``reason`` says which.
    """
    data, name = _read_source(source)
    return open_bytes(data, name, window=window)


def convert_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any PIL mode to ``RGB`` (``channels=3``) or ``L`` (``channels=1``).

    Rules:
        * transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) is
          composited on black;
        * ``1`` (bilevel) becomes 0/255; ``CMYK``, ``YCbCr``, palettes convert as PIL does;
        * 16-bit modes (``I;16``, ``I;16B``, ``I;16L``...) are scaled so the dtype maximum maps
          to 255 (value / 257, rounded), whatever bit depth was really used: 12-bit data stored
          in 16 bits comes out dark but never clipped;
        * ``I`` (32-bit integer): values within 0..65535 are scaled like 16-bit; otherwise
          min-max rescaled to 0..255;
        * ``F`` (float): values within 0..1 are multiplied by 255, values within 0..255 kept,
          otherwise min-max rescaled; NaN becomes 0.
        * colour to grey uses PIL's ITU-R 601-2 luma; grey to colour repeats the channel.

    Args:
        img: a loaded image.
        channels: 3 for ``RGB``, 1 for ``L``.

    Returns:
        A new image (or ``img`` itself when it is already in the wanted mode).

    Raises:
        ValueError: ``channels`` is not 1 or 3.
        ImageDecodeError: the mode cannot be converted.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    target = "RGB" if channels == 3 else "L"
    mode = img.mode
    if mode == target:
        return img
    try:
        if mode.startswith("I;16") or mode in ("I", "F"):
            img = Image.fromarray(_scale_to_uint8(np.asarray(img), mode))
        elif mode == "1":
            img = img.convert("L")
        elif mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode in ("LA", "La", "PA"):
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "RGBa"):
            rgba = img if img.mode == "RGBA" else img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(black, rgba).convert("RGB")
        if img.mode != target:
            if img.mode not in _RGB_LIKE and img.mode != "L":
                img = img.convert("RGB")
            img = img.convert(target)
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"unsupported mode {mode} ({_one_line(str(exc))})") from exc
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Shorthand for ``convert_mode(img, 3)``."""
    return convert_mode(img, 3)


def to_array(img: Image.Image, size: int, channels: int = 3) -> np.ndarray:
    """Convert and resize an image to a square ``uint8`` array.

    The image is stretched to ``size`` x ``size`` (no padding, aspect ratio not kept) with
    bilinear resampling, which PIL antialiases when shrinking.

    Args:
        img: a loaded image in any mode.
        size: side of the output in pixels.
        channels: 3 for RGB, 1 for grey.

    Returns:
        Array of shape ``(size, size, channels)``, dtype ``uint8``.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    grey_to_rgb = channels == 3 and (img.mode in _GREY_MODES or img.mode.startswith("I;16"))
    img = convert_mode(img, 1 if grey_to_rgb else channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    if grey_to_rgb:  # resizing one channel, then repeating it, gives the same pixels faster
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if channels == 1:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def decode_image(
    source: str | Path | bytes,
    size: int,
    channels: int = 3,
    *,
    draft: bool = False,
    max_pixels: int | None = None,
    window: str | tuple[float, float] | None = None,
) -> np.ndarray:
    """Open, convert and resize one image: :func:`open_image` + :func:`to_array`.

    Args:
        source: a file path, or the encoded bytes.
        size: side of the output in pixels.
        channels: 3 for RGB, 1 for grey.
        draft: allow the JPEG decoder to downscale first (faster; pixel values differ slightly
            from a full decode). Only for images at least 4x larger than ``size`` per side.
        max_pixels: a lower limit than :data:`MAX_PIXELS` (the served model's).
        window: a DICOM window ``center,width``; None: each file's own (see :func:`open_bytes`).

    Returns:
        Array of shape ``(size, size, channels)``, dtype ``uint8``.

    Raises:
        ImageDecodeError: the source is not a usable image.
    """
    data, name = _read_source(source)
    img = open_bytes(data, name, draft_size=2 * size if draft else None, max_pixels=max_pixels, window=window)
    return to_array(img, size, channels)


def default_workers() -> int:
    """Worker processes used when none are asked for: ``min(2, cpu count)``.

    1 (decode in this process) when the main program has no file, e.g. ``python - <<EOF`` or a
    notebook: spawned workers could not re-import it and would be restarted forever.
    """
    import sys

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main_file or not os.path.exists(main_file):
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _decode_task(args: tuple[str, int, int, bool, str | None]) -> np.ndarray:
    path, size, channels, draft, window = args
    return decode_image(path, size, channels, draft=draft, window=window)


def decode_many(
    paths: Sequence[str | Path],
    size: int,
    channels: int = 3,
    workers: int | None = None,
    *,
    draft: bool = False,
    progress: Callable[[int, int], None] | None = None,
    window: str | tuple[float, float] | None = None,
) -> np.ndarray:
    """Decode many files to one array, in order, in a process pool.

    Args:
        paths: image files.
        size: side of each output image in pixels.
        channels: 3 for RGB, 1 for grey.
        workers: processes to use; ``None`` means :func:`default_workers`. With 1 worker, or
            fewer than :data:`MIN_FILES_FOR_POOL` files, decoding happens in this process.
        draft: let the JPEG decoder downscale large files first (see :func:`decode_image`).
        progress: optional ``callback(done, total)`` called as files complete.
        window: a DICOM window ``center,width`` (see :func:`open_bytes`).

    Returns:
        Array of shape ``(len(paths), size, size, channels)``, dtype ``uint8``.

    Raises:
        ImageDecodeError: a file is not a usable image (the message names it).
    """
    total = len(paths)
    out = np.empty((total, size, size, channels), dtype=np.uint8)
    tasks = [(str(p), size, channels, draft, window) for p in paths]
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or total < MIN_FILES_FOR_POOL:
        for i, task in enumerate(tasks):
            out[i] = _decode_task(task)
            if progress:
                progress(i + 1, total)
        return out
    chunksize = max(1, min(64, total // (workers * 8)))
    with worker_pool(workers) as pool:
        for i, arr in enumerate(pool.imap(_decode_task, tasks, chunksize=chunksize)):
            out[i] = arr
            if progress:
                progress(i + 1, total)
    return out


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if mode == "I" and not (lo >= 0 and hi <= 65535):
        if hi == lo:
            return np.zeros(a.shape, dtype=np.uint8)
        return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    # 16-bit container: the dtype maximum 65535 maps to 255 (65535 / 257 == 255 exactly)
    return ((np.clip(a, 0, 65535) + 128) // 257).astype(np.uint8)


def _pixel_limit() -> int:
    pil_limit = Image.MAX_IMAGE_PIXELS
    return min(MAX_PIXELS, pil_limit) if pil_limit else MAX_PIXELS


def _pixels_of(exc: BaseException) -> str:
    text = str(exc)
    for token in text.replace("(", " ").replace(")", " ").split():
        if token.isdigit():
            return f"{token} pixels"
    return "too many pixels"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
