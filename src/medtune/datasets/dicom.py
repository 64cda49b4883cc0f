"""One DICOM file in, one 8-bit PIL image out, or the one-line reason why not.

Grey images (``MONOCHROME1``/``MONOCHROME2``) go through pydicom's own steps, in the standard's order:

1. the modality LUT (rescale slope and intercept, or a Modality LUT Sequence);
2. the VOI: a ``window`` given by the user (``center,width``, e.g. ``40,400``, linear) if any;
   otherwise the file's VOI LUT Sequence, else its first Window Center/Width; otherwise none;
3. scaling to 0..255: the VOI output range (a window's edges) maps to 0 and 255; with no window at
   all, the image's own minimum and maximum after the modality LUT map to 0 and 255 (a constant
   image is black);
4. ``MONOCHROME1`` inverted, so that dense is bright as in ``MONOCHROME2``.

Colour images (``RGB``, ``YBR_*``, which pydicom's decoders convert to RGB, and ``PALETTE COLOR``)
are scaled from their bit depth to 8 bits; a window does not apply to them.

A file that is valid DICOM but not one 2D image (several frames, a volume, no pixel data) raises
:class:`DicomSkipped`; a truncated file, or one whose transfer syntax needs a decoder that is not
installed, raises :class:`~medtune.datasets.images.ImageDecodeError` naming what to install.
pydicom's own warnings and log records are silenced: they may quote tag values (patient data).
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image

from medtune.datasets.images import ImageDecodeError
from medtune.errors import ConfigError

__all__ = ["EXTRA", "DicomSkipped", "decode", "is_dicom", "parse_window", "window_label"]

#: The pip extra with the decoders of compressed transfer syntaxes (JPEG lossless, JPEG-LS, JPEG 2000).
EXTRA = "dicom-compressed"
_INSTALL = f"pip install 'medtune[{EXTRA}]'"
FILE_WINDOW = "file"  # the label of "each file's own VOI LUT or window, else its min/max"

logging.getLogger("pydicom").propagate = False  # its messages may quote tag values
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


class DicomSkipped(ImageDecodeError):
    """A valid DICOM file that is not one 2D image (several frames, a volume, no pixel data).

    ``reason`` is the one line the scan's report gives for the skipped file.
    """


def parse_window(value, name: str = "window") -> tuple[float, float] | None:
    """``"40,400"`` (or ``(40, 400)``) as ``(center, width)``; None, ``""`` or ``"file"`` as None.

    Raises:
        ConfigError: not two numbers, or a width under 1.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", FILE_WINDOW, "none")):
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        center, width = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value}: expected center,width such as 40,400") from None
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise ConfigError(f"{name}={value}: the width must be a number of at least 1")
    return center, width


def window_label(value) -> str:
    """The window as logged and carried with a model: ``"40,400"``, or ``"file"`` for the files' own."""
    window = parse_window(value)
    return FILE_WINDOW if window is None else f"{window[0]:g},{window[1]:g}"


def is_dicom(data: bytes) -> bool:
    """A DICOM file by content: ``DICM`` at offset 128, or a bare dataset (no preamble) that starts
    with a group 0002 or 0008 element, as old exports do."""
    if data[128:132] == b"DICM":
        return True
    if len(data) < 12 or data[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return False
    explicit = data[4:6].isalpha() and data[4:6].isupper()
    little = data[:2] in (b"\x02\x00", b"\x08\x00")
    length = int.from_bytes(data[4:8], "little" if little else "big")
    return explicit or length < len(data)


def decode(data: bytes, name: str | None = None, *, window=None, max_pixels: int | None = None) -> Image.Image:
    """Decode a DICOM file's pixels to an ``L`` or ``RGB`` image (see the module docstring).

    Args:
        data: the file's bytes.
        name: the file, for messages.
        window: ``center,width`` applied to grey images instead of the file's VOI.
        max_pixels: larger images (rows x columns) are refused before their pixels are decoded.

    Raises:
        ImageDecodeError: unreadable, truncated, a missing decoder; :class:`DicomSkipped` for
            several frames or no pixel data.
    """
    import pydicom

    user_window = parse_window(window)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many kinds on a broken header
        raise ImageDecodeError(f"unreadable DICOM header ({type(exc).__name__})", name) from exc
    if "PixelData" not in ds:
        raise DicomSkipped("DICOM file without pixel data", name)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, cols, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageDecodeError("DICOM image without valid rows, columns or frames", name) from exc
    if frames > 1:
        raise DicomSkipped("multi-frame DICOM: only single-frame 2D images are used", name)
    if max_pixels and rows * cols > max_pixels:
        raise ImageDecodeError(f"decompression bomb ({rows * cols} pixels)", name)
    arr = _pixels(ds, name)
    if arr.ndim != (2 if samples == 1 else 3):
        raise DicomSkipped("DICOM volume: only single-frame 2D images are used", name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            return Image.fromarray(_grey(arr, ds, user_window, invert=photometric == "MONOCHROME1"), "L")
        return Image.fromarray(_colour(arr, ds, photometric), "RGB")
    except (ValueError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
        raise ImageDecodeError(f"DICOM {photometric} pixels not usable: {_one_line(exc)}", name) from exc


def _pixels(ds, name: str | None) -> np.ndarray:
    from pydicom.pixels import get_decoder
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:  # a bare dataset: the encoding pydicom found
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    syntax = meta.TransferSyntaxUID
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        raise ImageDecodeError(f"DICOM transfer syntax {syntax} is not supported", name) from None
    if not available:
        raise ImageDecodeError(f"DICOM {syntax.name} needs a decoder: {_INSTALL}", name)
    try:
        return ds.pixel_array
    except (ValueError, EOFError) as exc:
        if "less than expected" in str(exc) or isinstance(exc, EOFError):
            raise ImageDecodeError("truncated DICOM pixel data", name) from exc
        raise ImageDecodeError(f"undecodable DICOM pixel data: {_one_line(exc)}", name) from exc
    except RuntimeError as exc:  # every installed plugin failed (e.g. 12-bit JPEG with Pillow alone)
        raise ImageDecodeError(
            f"DICOM {syntax.name} not decodable by the installed decoders ({_INSTALL} adds some)", name
        ) from exc
    except Exception as exc:
        raise ImageDecodeError(f"undecodable DICOM pixel data ({type(exc).__name__})", name) from exc


def _grey(arr: np.ndarray, ds, window: tuple[float, float] | None, *, invert: bool) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut, apply_windowing

    values = apply_modality_lut(arr, ds)
    if window is not None:
        for keyword in ("VOILUTSequence", "VOILUTFunction"):
            if keyword in ds:
                del ds[keyword]
        ds.WindowCenter, ds.WindowWidth = window
    if window is not None or ("WindowCenter" in ds and "WindowWidth" in ds and not ds.get("VOILUTSequence")):
        out = apply_windowing(values, ds)
        with np.errstate(over="ignore"):  # the output range: the window applied to its own extremes
            lo, hi = apply_windowing(np.array([-1e30, 1e30]), ds)
    elif ds.get("VOILUTSequence"):
        out = apply_voi_lut(values, ds)
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        first, entries = int(descriptor[1]), int(descriptor[0]) or 2**16
        span = apply_voi(np.arange(first, first + entries), ds)
        lo, hi = float(span.min()), float(span.max())
    else:
        out = values
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    scaled = (np.asarray(out, np.float64) - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(out.shape)
    if invert:
        scaled = 255.0 - scaled
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _colour(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)[..., :3]
        top = float(np.iinfo(arr.dtype).max)
    elif photometric == "RGB" or photometric.startswith("YBR"):  # YBR: pydicom's decoders give RGB
        top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
    else:
        raise ValueError("photometric interpretation not supported")
    if top == 255.0 and arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__
