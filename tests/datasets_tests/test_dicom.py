"""DICOM files through medtune's one image decoding: pydicom's bundled files and files written here."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import JPEGLSLossless

from medtune.datasets import dicom
from medtune.datasets.images import ImageDecodeError, decode_image, open_bytes, open_image
from medtune.errors import ConfigError
from tests.dicom_files import dicom_bytes, grey_phantom


def grey(source, **kw) -> np.ndarray:
    img = open_image(source, **kw)
    assert img.mode == "L"
    return np.asarray(img)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_bundled_ct_and_mr_slices_decode_to_full_range_grey():
    ct = grey(get_testdata_file("CT_small.dcm"))  # rescale -1024, no window: its own min/max
    assert ct.shape == (128, 128) and (ct.min(), ct.max()) == (0, 255)
    mr = grey(get_testdata_file("MR_small.dcm"))  # its window 600/1600 from the file
    assert mr.shape == (64, 64) and mr.max() == 255 and mr.min() > 0  # nothing below the window's floor


def test_a_windowed_ct_slice_maps_the_window_edges_to_0_and_255(tmp_path):
    """Stored values -1024 .. 1000 with intercept -1024: HU -1024 .. 1000; window 40/400 spans -160..240."""
    hu = np.linspace(-1024, 1000, 64 * 64).reshape(64, 64).round()
    stored = (hu + 1024).astype(np.int16)
    data = dicom_bytes(stored, slope=1, intercept=-1024, center=40, width=400, bits_stored=12)
    out = grey(data)
    assert (out[hu <= -160] == 0).all() and (out[hu >= 240] == 255).all()
    inside = (hu > -150) & (hu < 230)
    assert (out[inside] > 0).all() and (out[inside] < 255).all()
    assert abs(int(out[np.abs(hu - 40) < 2].mean()) - 128) <= 1  # the centre is mid-grey
    # a file without a window, given the same window: the same pixels
    plain = dicom_bytes(stored, slope=1, intercept=-1024, bits_stored=12)
    np.testing.assert_array_equal(grey(plain, window="40,400"), out)
    # the bundled CT slice under a user window: edges by its own Hounsfield units
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    units = apply_modality_lut(ds.pixel_array, ds)
    ct = grey(get_testdata_file("CT_small.dcm"), window=(40, 400))
    assert (ct[units <= -160] == 0).all() and (ct[units >= 240] == 255).all()


def test_monochrome1_decodes_equal_to_monochrome2_inverted_back():
    phantom = grey_phantom(0).astype(np.uint16) * 16  # 12-bit values in 16-bit words
    mono2 = grey(dicom_bytes(phantom, bits_stored=12))
    mono1 = grey(dicom_bytes(4095 - phantom, photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_array_equal(mono1, mono2)
    np.testing.assert_array_equal(mono2, grey_phantom(0))  # 0..4080 stretched back to 0..255


def test_signed_16_bit_with_rescale_uses_the_modality_values():
    rng = np.random.default_rng(0)
    stored = rng.integers(-2000, 3000, (32, 48)).astype(np.int16)
    out = grey(dicom_bytes(stored, slope=0.5, intercept=-100))
    values = stored * 0.5 - 100
    expected = np.rint((values - values.min()) * 255 / (values.max() - values.min()))
    np.testing.assert_array_equal(out, expected)


def test_rgb_ybr_and_jpeg_compressed_colour_files_give_rgb():
    rgb = open_image(get_testdata_file("SC_rgb_rle.dcm"))  # RLE, pydicom's own decoder
    ybr = open_image(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))  # the same picture, as YBR
    jpeg = open_image(get_testdata_file("SC_rgb_jpeg.dcm"))  # baseline JPEG, through Pillow
    assert rgb.mode == ybr.mode == jpeg.mode == "RGB" and rgb.size == ybr.size == (100, 100)
    diff = np.abs(np.asarray(rgb, np.int16) - np.asarray(ybr, np.int16))
    assert diff.mean() < 3, "YBR converted to RGB matches the RGB file"
    written = np.dstack([grey_phantom(1), grey_phantom(2), grey_phantom(3)])
    np.testing.assert_array_equal(np.asarray(open_image(dicom_bytes(written, photometric="RGB"))), written)


def test_recognised_by_content_without_extension_or_preamble(tmp_path):
    phantom = grey_phantom(0)
    for name, data in [("IM000001", dicom_bytes(phantom)), ("bare.img", dicom_bytes(phantom, preamble=False))]:
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(grey(tmp_path / name), phantom)


def test_a_dicom_decodes_like_the_png_of_the_same_pixels():
    phantom = grey_phantom(3, size=50)
    np.testing.assert_array_equal(decode_image(dicom_bytes(phantom), 32), decode_image(png(phantom), 32))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: dicom_bytes(np.stack([grey_phantom(i) for i in range(3)])), "multi-frame DICOM"),
        (lambda: open(get_testdata_file("SC_rgb_rle_2frame.dcm"), "rb").read(), "multi-frame DICOM"),
        (lambda: open(get_testdata_file("rtplan.dcm"), "rb").read(), "DICOM file without pixel data"),
    ],
)
def test_multi_frame_and_imageless_files_are_skipped_with_their_reason(make, reason):
    with pytest.raises(dicom.DicomSkipped) as info:
        open_bytes(make(), "scan.dcm")
    assert isinstance(info.value, ImageDecodeError) and info.value.reason.startswith(reason)
    assert str(info.value).startswith("scan.dcm: ") and "\n" not in str(info.value)


def test_a_truncated_file_is_one_line():
    cut = dicom_bytes(grey_phantom(0).astype(np.uint16))[:-500]
    for data in (cut, open(get_testdata_file("MR_truncated.dcm"), "rb").read()):
        with pytest.raises(ImageDecodeError) as info:
            open_bytes(data, "cut.dcm")
        assert str(info.value) == "cut.dcm: truncated DICOM pixel data"


def test_a_transfer_syntax_without_its_decoder_names_the_extra(tmp_path):
    """JPEG-LS needs pylibjpeg-libjpeg (the dicom-compressed extra), which CI does not install."""
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(JPEGLSLossless).is_available:  # the extra is installed: the same pixels as MR_small
        np.testing.assert_array_equal(grey(path), grey(get_testdata_file("MR_small.dcm")))
        return
    written = tmp_path / "IM_JLS"
    written.write_bytes(dicom_bytes(grey_phantom(0), syntax=JPEGLSLossless))
    for source in (path, str(written)):
        with pytest.raises(ImageDecodeError) as info:
            open_image(source)
        assert str(info.value) == (
            f"{source}: DICOM JPEG-LS Lossless Image Compression needs a decoder: "
            "pip install 'medtune[dicom-compressed]'"
        )


def test_a_dicom_larger_than_the_pixel_limit_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        open_bytes(dicom_bytes(grey_phantom(0)), "big.dcm", max_pixels=1000)


@pytest.mark.parametrize("text", ["40", "a,b", "40,0", "40,400,2", "nan,3"])
def test_a_bad_window_is_one_line_naming_the_parameter(text):
    with pytest.raises(ConfigError, match=r"^window=.*: "):
        dicom.parse_window(text)


def test_window_labels():
    assert dicom.window_label(None) == dicom.window_label("") == dicom.window_label("file") == "file"
    assert dicom.window_label(" 40, 400") == dicom.window_label((40.0, 400)) == "40,400"


def mixed_folder(root, n: int = 8):
    """Two classes of synthetic phantoms, half PNG, half DICOM (one without extension), plus a
    multi-frame and a truncated DICOM file."""
    from medtune.datasets.synthetic import generate

    x, y, _ = generate(n, 40, seed=4)
    for label in (0, 1):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i, image in enumerate(x[y == label]):
            grey_image = image[:, :, 0]
            if i % 2:
                (folder / f"img{i}.png").write_bytes(png(grey_image))
            else:
                name = "IM0000" if i == 0 else f"img{i}.dcm"
                (folder / name).write_bytes(dicom_bytes(grey_image.astype(np.uint16) * 16, bits_stored=12))
    (root / "class0" / "cine.dcm").write_bytes(dicom_bytes(np.stack([x[0][:, :, 0]] * 3)))
    (root / "class1" / "cut.dcm").write_bytes(dicom_bytes(x[1][:, :, 0].astype(np.uint16))[:-300])
    return root


def test_split_of_a_mixed_dicom_and_png_folder_names_the_skipped_files_and_keys_the_cache_by_window(project, tmp_path):
    from medtune.steps.split import SplitOptions, run_split

    folder = mixed_folder(tmp_path / "mixed")
    first = run_split(SplitOptions(dataset=str(folder), image_size=32), reuse_run=True)
    skipped = {s["path"]: s["reason"] for s in first.result.report["skipped"]}
    assert skipped == {
        str(folder / "class0" / "cine.dcm"): "multi-frame DICOM: only single-frame 2D images are used",
        str(folder / "class1" / "cut.dcm"): "truncated DICOM pixel data",
    }
    assert sum(sum(c.values()) for c in first.result.report["counts"].values()) == 16  # 8 DICOM (one bare) + 8 PNG
    run = mlflow.get_run(first.run_id)
    assert run.data.params["window"] == "file"
    windowed = run_split(SplitOptions(dataset=str(folder), image_size=32, window="600,1200"), reuse_run=True)
    assert windowed.run_id != first.run_id, "another window is another split run"
    assert windowed.cache.key != first.cache.key and not windowed.cache_reused
    assert mlflow.get_run(windowed.run_id).data.params["window"] == "600,1200"
    again = run_split(SplitOptions(dataset=str(folder), image_size=32, window="600,1200"), reuse_run=True)
    assert again.run_id == windowed.run_id and again.cache_reused

    def pixels(outcome, dicom_files: bool):
        return np.concatenate(
            [
                outcome.cache.x[s][
                    [i for i, p in enumerate(outcome.cache.paths[s]) if p.endswith(".png") != dicom_files]
                ]
                for s in outcome.cache.splits
            ]
        )

    np.testing.assert_array_equal(pixels(first, False), pixels(windowed, False))  # PNG files: no window
    assert len(pixels(first, True)) == 8 and (pixels(first, True) != pixels(windowed, True)).any()
