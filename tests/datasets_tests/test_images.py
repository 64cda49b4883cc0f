"""Decoding of every kind of image file, good and bad, built at test time."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from medtune.datasets import images
from medtune.datasets.images import ImageDecodeError
from medtune.errors import DataError


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _reason(source) -> str:
    with pytest.raises(ImageDecodeError) as info:
        images.open_image(source)
    return info.value.reason


# --- bad files ------------------------------------------------------------------------------


def test_zero_byte_file_rejected(tmp_path):
    path = _write(tmp_path / "empty.jpg", b"")
    assert _reason(path) == "zero-byte file"


def test_truncated_jpeg_passes_verify_but_is_rejected(tmp_path):
    data = _encode(_noise((256, 256)), "JPEG", quality=90)
    path = _write(tmp_path / "cut.jpg", data[: len(data) // 2])
    with Image.open(path) as img:
        img.verify()  # PIL's cheap check does not notice
    assert _reason(path) == "truncated image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_rejected_even_if_global_flag_set(tmp_path, monkeypatch):
    data = _encode(_noise((256, 256)), "JPEG", quality=90)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _reason(data[: len(data) // 2]) == "truncated image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = _write(tmp_path / "notes.jpg", b"patient list, not a picture\n")
    assert _reason(path) == "not an image"


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        images.open_image(tmp_path / "nope.png")
    assert info.value.reason.startswith("unreadable:")
    assert "nope.png" in str(info.value)
    assert isinstance(info.value, DataError)


def test_decompression_bomb_rejected_by_module_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    path = _write(tmp_path / "big.png", _encode(Image.new("L", (50, 50)), "PNG"))
    assert _reason(path) == "decompression bomb (2500 pixels)"


def test_decompression_bomb_warning_from_pil_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _encode(Image.new("L", (40, 40)), "PNG")  # 1600 px: PIL warns (between 1x and 2x)
    assert _reason(data).startswith("decompression bomb")
    data = _encode(Image.new("L", (50, 50)), "PNG")  # 2500 px: PIL raises
    assert _reason(data).startswith("decompression bomb")


def test_decode_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ImageDecodeError("truncated image", "/x/a.jpg")))
    assert err.reason == "truncated image" and err.path == "/x/a.jpg"
    assert str(err) == "/x/a.jpg: truncated image"


# --- formats detected by content ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "kwargs"),
    [
        ("png_named.jpg", "PNG", {}),
        ("UPPER.JPG", "JPEG", {"quality": 95}),
        ("UPPER.PNG", "PNG", {}),
        ("scan.bmp", "BMP", {}),
        ("scan.tif", "TIFF", {}),
        ("scan.tiff", "TIFF", {"compression": "tiff_lzw"}),
        ("photo.webp", "WEBP", {"lossless": True}),
        ("noext", "PNG", {}),
    ],
)
def test_formats_read_by_content(tmp_path, name, fmt, kwargs):
    src = _noise((40, 30))
    path = _write(tmp_path / name, _encode(src, fmt, **kwargs))
    img = images.open_image(path)
    assert img.format == fmt
    assert img.size == (40, 30)
    if fmt != "JPEG":  # lossless
        assert np.array_equal(np.asarray(images.to_rgb(img)), np.asarray(src))


def test_open_image_accepts_bytes_and_str(tmp_path):
    data = _encode(_noise(), "PNG")
    path = _write(tmp_path / "a.png", data)
    assert images.open_image(data).size == images.open_image(str(path)).size == (64, 48)


def test_exif_orientation_6_swaps_width_and_height(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(Image.new("RGB", (40, 20), (200, 10, 10)), "JPEG", exif=exif.tobytes())
    path = _write(tmp_path / "rotated.jpg", data)
    img = images.open_image(path)
    assert img.size == (20, 40)


# --- modes ----------------------------------------------------------------------------------


def test_grayscale_to_rgb_and_to_one_channel():
    img = images.open_image(_encode(Image.new("L", (10, 10), 77), "PNG"))
    assert img.mode == "L"
    rgb = images.to_array(img, 10, 3)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert (rgb == 77).all()
    grey = images.to_array(img, 10, 1)
    assert grey.shape == (10, 10, 1) and (grey == 77).all()


def test_la_is_composited_on_black():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (200, 255))
    img.putpixel((1, 0), (200, 0))
    out = np.asarray(images.convert_mode(images.open_image(_encode(img, "PNG")), 1))
    assert out.tolist() == [[200, 0]]


def test_rgba_is_composited_on_black():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (200, 100, 50, 255))
    img.putpixel((1, 0), (200, 100, 50, 0))
    img.putpixel((2, 0), (200, 100, 50, 128))
    out = np.asarray(images.to_rgb(images.open_image(_encode(img, "PNG"))))
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert abs(int(out[0, 2, 0]) - 100) <= 1


def test_palette_with_transparency_is_composited_on_black():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putpixel((0, 0), 1)
    img.putpixel((1, 0), 2)
    decoded = images.open_image(_encode(img, "PNG", transparency=2))
    assert decoded.mode == "P" and "transparency" in decoded.info
    out = np.asarray(images.to_rgb(decoded))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [0, 0, 0]


def test_one_bit_becomes_0_and_255():
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    decoded = images.open_image(_encode(img, "PNG"))
    assert decoded.mode == "1"
    assert np.asarray(images.convert_mode(decoded, 1)).tolist() == [[0, 255]]


def test_cmyk_jpeg_becomes_rgb():
    data = _encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = images.open_image(data)
    assert decoded.mode == "CMYK"
    px = images.to_array(decoded, 8)[4, 4].astype(int)
    assert px[0] > 230 and px[1] < 25 and px[2] < 25  # red


def test_16_bit_png_scaled_by_dtype_max():
    arr = np.array([[0, 32768, 65535, 4095]], dtype=np.uint16)
    decoded = images.open_image(_encode(Image.fromarray(arr), "PNG"))
    assert decoded.mode.startswith("I")
    out = np.asarray(images.convert_mode(decoded, 1))
    assert out.tolist() == [[0, 128, 255, 16]]
    assert np.asarray(images.to_rgb(decoded))[0, 2].tolist() == [255, 255, 255]


def test_16_bit_big_endian_and_32_bit_modes():
    big = Image.frombytes("I;16B", (2, 1), np.array([65535, 257], dtype=">u2").tobytes())
    assert np.asarray(images.convert_mode(big, 1)).tolist() == [[255, 1]]
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32), mode="I")
    assert np.asarray(images.convert_mode(wide, 1)).tolist() == [[0, 128, 255]]


def test_float_mode_scaling():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert np.asarray(images.convert_mode(unit, 1)).tolist() == [[0, 128, 255, 0]]
    wide = Image.fromarray(np.array([[-1.0, 1.0]], dtype=np.float32))
    assert np.asarray(images.convert_mode(wide, 1)).tolist() == [[0, 255]]


def test_convert_mode_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="channels"):
        images.convert_mode(Image.new("L", (1, 1)), 2)


# --- arrays ---------------------------------------------------------------------------------


def test_to_array_stretches_to_square():
    out = images.to_array(_noise((64, 32)), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize("mode", ["L", "LA", "I;16", "1"])
def test_grey_to_rgb_array_equals_convert_then_resize(mode):
    rng = np.random.default_rng(3)
    grey = Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (37, 53), dtype=np.uint16))
    elif mode == "LA":
        img = Image.merge("LA", (grey, Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8))))
    else:
        img = grey.convert(mode)
    slow = np.asarray(images.to_rgb(img).resize((20, 20), Image.Resampling.BILINEAR))
    assert np.array_equal(images.to_array(img, 20, 3), slow)


def test_decode_image_matches_open_and_to_array(tmp_path):
    path = _write(tmp_path / "a.png", _encode(_noise(), "PNG"))
    assert np.array_equal(images.decode_image(path, 24), images.to_array(images.open_image(path), 24))
    assert images.decode_image(path.read_bytes(), 24, 1).shape == (24, 24, 1)


def test_draft_decoding_of_large_jpeg_is_close_to_full_decode():
    grad = np.tile(np.linspace(0, 255, 1024, dtype=np.uint8), (1024, 1))
    data = _encode(Image.fromarray(grad).convert("RGB"), "JPEG", quality=95)
    full = images.decode_image(data, 64).astype(int)
    fast = images.decode_image(data, 64, draft=True).astype(int)
    assert fast.shape == full.shape == (64, 64, 3)
    assert np.abs(full - fast).mean() < 2.0


def test_decode_many_in_process_keeps_order_and_names_bad_file(tmp_path):
    paths = []
    for i in range(3):
        paths.append(_write(tmp_path / f"{i}.png", _encode(Image.new("L", (8, 8), 10 * i), "PNG")))
    out = images.decode_many(paths, 4, 1, workers=1)
    assert out.shape == (3, 4, 4, 1) and out[:, 0, 0, 0].tolist() == [0, 10, 20]
    bad = _write(tmp_path / "bad.png", b"")
    with pytest.raises(ImageDecodeError, match="bad.png: zero-byte file"):
        images.decode_many([*paths, bad], 4, 1, workers=1)


def test_decode_many_with_process_pool_keeps_order(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MIN_FILES_FOR_POOL", 0)
    paths = []
    for i in range(20):
        data = _encode(Image.new("RGB", (20, 20), (i * 12, 0, 0)), "JPEG", quality=100)
        paths.append(_write(tmp_path / f"{i:02d}.JPG", data))
    seen = []
    out = images.decode_many([str(p) for p in paths], 8, workers=2, progress=lambda d, t: seen.append((d, t)))
    assert out.shape == (20, 8, 8, 3)
    assert [abs(int(v) - i * 12) <= 2 for i, v in enumerate(out[:, 4, 4, 0])] == [True] * 20
    assert seen[-1] == (20, 20)


def test_decoding_workers_do_not_rerun_a_script_without_main_guard(tmp_path):
    """A notebook saved as a script calls medtune at top level; spawned workers must not run it again."""
    import subprocess
    import sys

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(70):  # above MIN_FILES_FOR_POOL: a pool of workers decodes them
        Image.new("RGB", (20, 20), (i, 0, 0)).save(folder / f"{i}.png")
    runs = tmp_path / "runs.txt"
    script = tmp_path / "notebook_as_script.py"
    script.write_text(
        "from pathlib import Path\n"
        f"with open({str(runs)!r}, 'a') as fh: fh.write('x')\n"
        "from medtune.datasets.images import decode_many\n"
        f"x = decode_many(sorted(Path({str(folder)!r}).glob('*.png')), 16, 3, workers=2)\n"
        "print(x.shape)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(70, 16, 16, 3)"
    assert runs.read_text() == "x", "the script's top level ran once, in the parent only"
