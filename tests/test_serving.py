"""The pyfunc round trip: a tiny trained model logged with serving.log_model, loaded back with
mlflow.pyfunc.load_model and fed encoded images of odd sizes and colour modes."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.types import DataType
from mlflow.types.schema import Array
from PIL import Image

from medtune import calibration, serving, training
from medtune.datasets.images import decode_image
from medtune.datasets.synthetic import generate
from medtune.models import build_model
from tests.dicom_files import dicom_bytes, grey_phantom
from tests.helpers import use_sqlite_store

pytestmark = pytest.mark.xdist_group("test_serving")  # one worker: the module's fixture built once

CLASSES = ["crescent", "disc", "ring tumour", "speckled"]  # one name with a space
SIZE = 32
PARAMS = {
    "num_blocks": 2,
    "filters": 4,
    "kernel_size": 3,
    "conv_type": "standard",
    "residual": False,
    "batch_norm": True,
    "dropout": 0.0,
    "l2": 0.0,
    "dense_units": 8,
    "optimizer": "adam",
    "learning_rate": 1e-3,
}


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def odd_images() -> dict[str, bytes]:
    """Encoded images in the modes and sizes a clinic's export may hold."""
    rng = np.random.default_rng(7)
    x, _, _ = generate(1, 53, seed=3)  # real phantoms, so the probabilities are not all alike
    rgb = Image.fromarray(x[0])
    rgba = np.dstack([rng.integers(0, 256, (41, 29, 3)), rng.integers(0, 256, (41, 29))]).astype(np.uint8)
    palette = rgb.resize((45, 31)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "grey_png": encode(Image.fromarray(x[1][:, :, 0]).resize((40, 50)), "PNG"),
        "rgba_png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette_png": encode(palette, "PNG"),
        "palette_transparent_png": encode(palette, "PNG", transparency=0),
        "grey16_png": encode(Image.fromarray(x[2][:, :, 0].astype(np.uint16) * 257), "PNG"),
        "rgb_jpeg_37x53": encode(rgb.resize((37, 53)), "JPEG", quality=90),
        "cmyk_jpeg": encode(Image.fromarray(x[3]).resize((30, 44)).convert("CMYK"), "JPEG"),
        "rgb_png_large": encode(rgb.resize((300, 211)), "PNG"),
    }


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny model trained for one epoch, made over-confident on purpose, calibrated on 200 validation
    phantoms (temperature and conformal threshold) and logged with serving.log_model into a fresh SQLite store."""
    root = tmp_path_factory.mktemp("serving")
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        experiment_id = use_sqlite_store(mp, root, "serving")
        keras.utils.set_random_seed(0)
        x, y, _ = generate(6, SIZE, seed=1)
        raw = training.compile_model(build_model(PARAMS, (SIZE, SIZE, 3), len(CLASSES)), PARAMS)
        raw.fit(x.astype("float32"), keras.utils.to_categorical(y, len(CLASSES)), epochs=2, batch_size=8, verbose=0)
        logits = raw.get_layer("logits")
        logits.set_weights([w * 6.0 for w in logits.get_weights()])  # over-confident on purpose
        x_val, y_val, _ = generate(50, SIZE, seed=2)
        model, fit = calibration.calibrate(raw, x_val, y_val, level=0.9)
        metadata = serving.build_metadata(CLASSES, SIZE, 3, dataset="synthetic", backbone="custom", **fit.metadata())
        examples = [encode(Image.fromarray(x[0]), "PNG"), encode(Image.fromarray(x[7]), "JPEG")]
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = serving.log_model(model, metadata, example_images=examples, registered_model_name="medtune-serving")
        yield {"model": model, "raw": raw, "fit": fit, "info": info, "run_id": run.info.run_id, "root": root}
    mlflow.set_tracking_uri(previous)


def keras_probabilities(model, images: list[bytes]) -> np.ndarray:
    x = np.stack([decode_image(b, SIZE, 3) for b in images])
    return model.predict(x.astype("float32"), verbose=0)


def test_pyfunc_predicts_like_keras_on_odd_images(logged):
    pyfunc = mlflow.pyfunc.load_model(logged["info"].model_uri)
    images = odd_images()
    out = pyfunc.predict(pd.DataFrame({"image": list(images.values())}))
    prob_cols = ["prob_crescent", "prob_disc", "prob_ring_tumour", "prob_speckled"]
    assert list(out.columns) == ["label", *prob_cols, "prediction_set"]
    assert len(out) == len(images)
    probs = out[prob_cols].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    expected = keras_probabilities(logged["model"], list(images.values()))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert out["label"].tolist() == [CLASSES[i] for i in expected.argmax(1)]
    assert set(out["label"]) <= set(CLASSES)


def test_registered_model_loads_by_name_and_takes_base64_text(logged):
    """JSON clients send base64 text: the pyfunc decodes it like bytes."""
    pyfunc = mlflow.pyfunc.load_model("models:/medtune-serving/1")
    png = odd_images()["rgb_jpeg_37x53"]
    as_text = pyfunc.predict(pd.DataFrame({"image": [base64.b64encode(png).decode()]}))
    as_bytes = pyfunc.predict(pd.DataFrame({"image": [png]}))
    pd.testing.assert_frame_equal(as_text, as_bytes)


def test_signature_input_example_and_metadata_are_logged(logged):
    info = logged["info"]
    sig = info.signature
    assert sig.inputs.input_names() == ["image"]
    assert sig.inputs.inputs[0].type == DataType.binary
    names = ["label", "prob_crescent", "prob_disc", "prob_ring_tumour", "prob_speckled", "prediction_set"]
    assert sig.outputs.input_names() == names
    assert sig.outputs.inputs[-1].type == Array(DataType.string)  # spark_udf: ArrayType(StringType)
    assert info.saved_input_example_info is not None

    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(logged["root"] / "dl")))
    model_conf = mlflow.models.Model.load(str(local))
    example = model_conf.load_input_example(str(local))
    assert list(example.columns) == ["image"] and len(example) == 2
    served = json.loads((local / "serving_input_example.json").read_text())
    assert served["dataframe_split"]["columns"] == ["image"]

    meta = model_conf.metadata
    assert meta["classes"] == CLASSES
    assert meta["image_size"] == SIZE and meta["channels"] == 3
    assert "not for diagnosis" in meta["intended_use"].lower() or "not a medical device" in meta["intended_use"].lower()
    assert meta["intended_use"] == serving.INTENDED_USE
    stored = json.loads(next(local.rglob("metadata.json")).read_text())
    assert stored["classes"] == CLASSES and stored["intended_use"] == serving.INTENDED_USE

    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    out = pyfunc.predict(example)  # the logged example is a valid input
    assert len(out) == 2


def test_keras_model_and_metadata_come_back_from_a_models_uri(logged, tmp_path):
    model, meta = serving.load_keras_from_uri("models:/medtune-serving/1", tmp_path)
    assert meta["classes"] == CLASSES
    images = list(odd_images().values())[:3]
    np.testing.assert_allclose(
        keras_probabilities(model, images), keras_probabilities(logged["model"], images), atol=1e-6
    )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"image": [b"\x89PNG not really", b"ok?"]}), "row 0: cannot decode image"),
        (pd.DataFrame({"image": [None]}), "row 0: expected encoded image bytes"),
        (pd.DataFrame({"image": ["***not base64***"]}), "row 0: a text value must be base64"),
        (pd.DataFrame({"picture": [b""]}), r"missing inputs \['image'\]"),  # MLflow's schema check
    ],
    ids=["corrupt", "none", "bad-base64", "no-image-column"],
)
def test_bad_rows_give_a_clear_error(logged, frame, message):
    pyfunc = mlflow.pyfunc.load_model(logged["info"].model_uri)
    good = odd_images()["grey_png"]
    if "image" in frame and len(frame) > 1:  # a good row first: the error names the bad one
        frame = pd.DataFrame({"image": [good, *frame["image"]]})
        message = message.replace("row 0", "row 1")
    with pytest.raises(Exception, match=message) as err:
        pyfunc.predict(frame)
    assert getattr(err.value, "error_code", "") in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")  # REST: 400


def test_a_dicom_upload_answers_like_the_png_of_the_same_phantom(logged):
    pixels = grey_phantom(2, size=53)
    pyfunc = mlflow.pyfunc.load_model(logged["info"].model_uri)
    rows = [encode(Image.fromarray(pixels), "PNG"), dicom_bytes(pixels), dicom_bytes(pixels, preamble=False)]
    out = pyfunc.predict(pd.DataFrame({"image": rows}))
    assert out["label"].nunique() == 1
    probs = out[[c for c in out.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs[1:], probs[[0, 0]], atol=1e-6)


def test_the_served_model_decodes_dicom_with_the_window_it_was_trained_with(logged):
    """A model whose split used window 40,400 reads a file without a window as one that carries it."""
    hu = np.linspace(-400, 400, 48 * 48).reshape(48, 48).round() * grey_phantom(1, 48) / 255
    stored = (hu + 1024).astype(np.int16)
    plain, carried = (
        dicom_bytes(stored, slope=1, intercept=-1024),
        dicom_bytes(stored, slope=1, intercept=-1024, center=40, width=400),
    )

    def served(window):
        classifier = serving.ImageClassifier()
        classifier.model = logged["model"]
        classifier.metadata = serving.build_metadata(CLASSES, SIZE, 3, window=window, **logged["fit"].metadata())
        return classifier.predict(None, pd.DataFrame({"image": [plain, carried]}))

    windowed, own = served("40,400"), served(None)
    assert windowed.drop(columns="prediction_set").iloc[0].equals(own.drop(columns="prediction_set").iloc[1])
    expected = keras_probabilities(logged["model"], [carried])[0]
    np.testing.assert_allclose(windowed.filter(like="prob_").to_numpy()[0], expected, atol=1e-6)
    assert not np.allclose(own.filter(like="prob_").to_numpy()[0], expected), "min/max differs from the window"


def test_image_column_is_required_without_a_signature_too(logged):
    """Called directly (no MLflow schema check first), the pyfunc names the missing column."""
    classifier = serving.ImageClassifier()
    classifier.model, classifier.metadata = logged["model"], serving.build_metadata(CLASSES, SIZE, 3)
    with pytest.raises(ValueError, match=r"needs an 'image' column .*\['picture'\]"):
        classifier.predict(None, pd.DataFrame({"picture": [b""]}))
    empty = classifier.predict(None, pd.DataFrame({"image": []}))
    assert list(empty.columns) == [
        "label",
        "prob_crescent",
        "prob_disc",
        "prob_ring_tumour",
        "prob_speckled",
        "prediction_set",
    ]
    assert len(empty) == 0


def test_generated_examples_are_two_different_images_of_the_model_size():
    from PIL import Image

    from medtune.serving import generated_examples

    images = [Image.open(io.BytesIO(b)) for b in generated_examples(40)]
    assert [im.size for im in images] == [(40, 40), (40, 40)] and [im.mode for im in images] == ["RGB", "RGB"]
    a, b = (np.asarray(im) for im in images)
    assert a.std() > 20 and np.array_equal(a.astype(int) + b, np.full_like(a, 255, dtype=int))


def test_the_served_model_gives_tempered_probabilities_and_the_calibrated_sets(logged):
    """Over-confident on purpose: the temperature is above 1, lowers validation ECE and keeps every label."""
    fit = logged["fit"]
    assert fit.temperature > 1.5 and fit.val_ece_after < fit.val_ece_before
    meta = mlflow.models.Model.load(logged["info"].model_uri).metadata
    assert meta["temperature"] == pytest.approx(fit.temperature) and meta["conformal_level"] == 0.9
    assert meta["conformal_threshold"] == pytest.approx(fit.conformal_threshold)
    images = list(odd_images().values())
    out = mlflow.pyfunc.load_model(logged["info"].model_uri).predict(pd.DataFrame({"image": images}))
    raw = keras_probabilities(logged["raw"], images)
    probs = out[[serving.prob_column(c) for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs, calibration.scale(raw, fit.temperature), atol=1e-5)
    assert out["label"].tolist() == [CLASSES[i] for i in raw.argmax(1)]  # the same answers, less sure of them
    assert list(out["prediction_set"]) == calibration.prediction_set(probs, CLASSES, meta)
    assert all(s and s[0] == label for s, label in zip(out["prediction_set"], out["label"]))


def test_served_sets_cover_held_out_phantoms_at_the_level(logged):
    """400 new phantoms: coverage within the finite-sample bound [level, level + 1/(n+1)] of the 100
    calibration images, give or take three standard deviations of calibration and test sampling."""
    x, y, _ = generate(100, SIZE, seed=9)
    frame = pd.DataFrame({"image": [encode(Image.fromarray(img), "PNG") for img in x]})
    out = mlflow.pyfunc.load_model(logged["info"].model_uri).predict(frame)
    covered = np.mean([CLASSES[t] in s for t, s in zip(y, out["prediction_set"])])
    level, n = 0.9, logged["fit"].n_calibration
    sd = np.sqrt(level * (1 - level) / (n + 2) + level * (1 - level) / len(y))
    assert level - 3 * sd <= covered <= level + 1 / (n + 1) + 3 * sd, (covered, sd)
    assert 1 <= np.mean([len(s) for s in out["prediction_set"]]) < len(CLASSES)  # not every class, every time


def test_in_process_predict_takes_1000_rows_in_bounded_memory(logged, tmp_path, monkeypatch):
    """The request cap belongs to the scoring server: in process, 1,000 rows of 128 px images go through in
    chunks: what it holds at once stays below half the 47 MiB of all their decoded pixels."""
    import tracemalloc

    size = 128
    with mlflow.start_run():
        info = serving.log_model(
            build_model(PARAMS, (size, size, 3), len(CLASSES)), serving.build_metadata(CLASSES, size, 3)
        )
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    image = odd_images()["rgb_png_large"]
    frame = pd.DataFrame({"image": [image] * 1000})
    pyfunc.predict(frame.head(2))  # warm up TensorFlow outside the measurement
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = pyfunc.predict(frame)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(out) == 1000 and out["label"].nunique() == 1
    all_pixels = 1000 * size * size * 3
    assert peak < all_pixels / 2, (
        f"{peak / 2**20:.1f} MiB traced while predicting ({all_pixels / 2**20:.0f} MiB of pixels)"
    )
    monkeypatch.setenv(serving.SERVING_ENV, "true")  # what `mlflow models serve` sets in its process
    with pytest.raises(serving.ImageInputError, match=f"1000 images in one request: at most {serving.MAX_ROWS}"):
        pyfunc.predict(frame)
