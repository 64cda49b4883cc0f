"""`medtune app` on loopback, driven through gradio_client and a headless Chromium.

Two tiny models registered in a fresh SQLite store as medtune-synthetic v1 (@champion, with a
model card and prediction sets) and v2 (@challenger, neither, as models logged before them), served
by the real `run_app` path in this process with the default upload cap.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medtune import serving, training
from medtune.app.server import DEFAULT_MAX_FILE_SIZE
from medtune.datasets.synthetic import generate
from medtune.models import build_model
from tests.dicom_files import dicom_bytes, grey_phantom
from tests.helpers import sqlite_store
from tests.test_serving import PARAMS, encode

pytestmark = pytest.mark.xdist_group("test_app")  # one worker: the module's fixture built once

CLASSES = ["crescent", "disc", "ring", "speckled"]
NAME = "medtune-synthetic"
CHAMPION, CHALLENGER = f"models:/{NAME}@champion", f"models:/{NAME}@challenger"
SIZE = 32
SET_THRESHOLD, SET_LEVEL = 0.2, 0.9  # the champion's prediction sets: every class with p >= 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(experiment_id: str, seed: int, with_card: bool) -> str:
    """A tiny model; ``with_card`` also gives it a model card and prediction sets."""
    from medtune.evaluation import evaluate_model
    from medtune.model_card import DataInfo
    from medtune.tracking import RunLogger, cards

    keras.utils.set_random_seed(seed)
    x, y, _ = generate(8, SIZE, seed=seed)
    model = training.compile_model(build_model(PARAMS, (SIZE, SIZE, 3), len(CLASSES)), PARAMS)
    model.fit(x.astype("float32"), keras.utils.to_categorical(y, len(CLASSES)), epochs=2, batch_size=8, verbose=0)
    sets = {"conformal_level": SET_LEVEL, "conformal_threshold": SET_THRESHOLD} if with_card else {}
    meta = serving.build_metadata(CLASSES, SIZE, 3, dataset="synthetic", backbone="custom", params=PARAMS, **sets)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = serving.log_model(
            model, meta, example_images=[encode(Image.fromarray(x[0]), "PNG")], registered_model_name=NAME
        )
        if with_card:
            ev = evaluate_model(model, x, y, CLASSES)
            data = DataInfo("synthetic", "generated", "", CLASSES, {"test": dict.fromkeys(CLASSES, 8)}, {})
            cards.log_model_card(
                RunLogger(run.info.run_id),
                ev,
                test_split="synthetic:test",
                gate=None,
                model=cards.model_info(
                    model, meta, name=NAME, version="1", run_id=run.info.run_id, params_source="test fixture"
                ),
                data=data,
            )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from medtune.steps.app import run_app

    root = tmp_path_factory.mktemp("app")
    with sqlite_store(root, "medtune-synthetic") as (mp, experiment_id):
        for env in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED"):
            mp.setenv(env, os.environ.get(env, ""))  # restored after the module
        for seed, alias in ((1, "champion"), (2, "challenger")):
            MlflowClient().set_registered_model_alias(NAME, alias, _register(experiment_id, seed, seed == 1))
        running = run_app(None, "127.0.0.1", free_port(), DEFAULT_MAX_FILE_SIZE, block=False)
        try:
            yield {"app": running, "root": root}
        finally:
            running.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    downloads = served["root"] / "downloads"
    return Client(served["app"].url, verbose=False, analytics_enabled=False, download_files=str(downloads))


def phantom(index: int, size=(45, 37), mode="RGB") -> Image.Image:
    x, _, _ = generate(1, 64, seed=11)
    img = Image.fromarray(x[index]).resize(size)
    return img.convert(mode) if mode != "RGB" else img


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def pyfunc_probabilities(uri: str, data: bytes) -> dict[str, float]:
    row = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [data]})).iloc[0]
    return {c: float(row[f"prob_{c}"]) for c in CLASSES}


def confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def champion_set(probs: dict[str, float]) -> str:
    """The champion's prediction set as the page words it: classes with p >= its threshold, most probable first."""
    ranked = sorted(probs, key=probs.get, reverse=True)
    *others, last = [c for c in ranked if probs[c] >= SET_THRESHOLD] or ranked[:1]
    return f"{', '.join(others)} or {last}" if others else last


def images_in(page: str) -> list[tuple[str, Image.Image]]:
    """(caption, image) of every inline PNG in an HTML output."""
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', page or "")
    return [(html.unescape(alt), Image.open(io.BytesIO(base64.b64decode(data)))) for data, alt in found]


def predict(client, path: str, uri: str = CHAMPION):
    from gradio_client import handle_file

    return client.predict(handle_file(path), uri, api_name="/predict")


def test_safe_defaults_loopback_no_telemetry_no_run_history(served):
    app = served["app"]
    assert app.url.startswith("http://127.0.0.1:")
    assert app.blocks.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert app.blocks.run_history is False and app.blocks.max_file_size == 20 * 1024**2
    assert Path(os.environ["GRADIO_TEMP_DIR"]) == app.cache_dir
    assert not [
        r
        for r in MlflowClient().search_runs([MlflowClient().get_experiment_by_name(NAME).experiment_id])
        if r.info.status == "RUNNING"
    ]


@pytest.mark.parametrize("kind", ["jpeg", "png16"])
def test_an_image_gets_label_probabilities_and_an_overlay_of_its_size(served, client, tmp_path, kind):
    if kind == "jpeg":
        img, data = phantom(1, (45, 37)), None
        data = encode(img, "JPEG", quality=90)
    else:  # 16-bit grey, as PACS exports hold
        grey = np.asarray(phantom(2, (40, 52)).convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(grey)
        data = encode(img, "PNG")
        assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    message, label, images, upload = predict(client, write(tmp_path, f"scan.{kind}", data))
    probs = confidences(label)
    assert sorted(probs) == CLASSES and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert label["label"] == max(probs, key=probs.get) and f"**{label['label']}**" in message
    expected = pyfunc_probabilities(CHAMPION, data)  # decoded as in training and serving
    assert probs == pytest.approx(expected, abs=1e-5)
    assert f"prediction set: **{champion_set(expected)} (90 % set)**" in message
    (name, original), (caption, overlay) = images_in(images)
    assert name == f"scan.{kind}" and caption == f"Grad-CAM of {label['label']}"
    assert overlay.size == original.size == img.size
    assert np.abs(np.asarray(overlay, float) - np.asarray(original.convert("RGB"), float)).mean() > 5  # heat drawn
    assert upload is None  # the input is cleared: the upload is gone from the server


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.txt", b"patient notes, not an image\n", "notes.txt: not an image"),
        ("cut.jpg", None, "cut.jpg: truncated image"),
    ],
)
def test_a_bad_file_gets_a_message_and_the_app_keeps_answering(served, client, tmp_path, name, data, reason):
    if data is None:
        whole = encode(phantom(0, (120, 90)), "JPEG", quality=95)
        data = whole[: len(whole) // 2]
    message, label, images, _ = predict(client, write(tmp_path, name, data))
    assert reason in message and "Traceback" not in message and "**Could not use this input.**" in message
    assert not label and not images
    _, label, _, _ = predict(client, write(tmp_path, "ok.png", encode(phantom(3), "PNG")))
    assert label["label"] in CLASSES


def test_a_dicom_upload_gets_the_label_and_probabilities_of_the_png_of_the_same_phantom(served, client, tmp_path):
    pixels = grey_phantom(1, size=45)
    _, as_png, _, _ = predict(client, write(tmp_path, "scan.png", encode(Image.fromarray(pixels), "PNG")))
    message, label, images, _ = predict(client, write(tmp_path, "IM0001", dicom_bytes(pixels)))  # no extension
    assert label["label"] == as_png["label"] and f"**{label['label']}**" in message
    assert confidences(label) == pytest.approx(confidences(as_png), abs=1e-6)
    (name, original), _ = images_in(images)
    assert name == "IM0001" and original.size == (45, 45)
    cine = write(tmp_path, "cine.dcm", dicom_bytes(np.stack([pixels] * 2)))
    message, label, _, _ = predict(client, cine)
    assert "cine.dcm: multi-frame DICOM: only single-frame 2D images are used" in message and not label


def test_an_upload_over_the_size_limit_is_refused_and_the_app_keeps_answering(served, client, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (2700, 2700, 3), dtype=np.uint8)
    big = write(tmp_path, "big.bmp", encode(Image.fromarray(noise), "BMP"))  # 21.9 MB > 20 MiB
    with pytest.raises(Exception, match="(?i)size|large"):
        predict(client, big)
    _, label, _, _ = predict(client, write(tmp_path, "ok.png", encode(phantom(3), "PNG")))
    assert label["label"] in CLASSES


def test_the_challenger_gives_its_own_answer_alone_and_side_by_side(served, client, tmp_path):
    from gradio_client import handle_file

    data = encode(phantom(1), "PNG")
    path = write(tmp_path, "scan.png", data)
    champion = confidences(predict(client, path, CHAMPION)[1])
    message, challenger, *_ = predict(client, path, CHALLENGER)
    assert "medtune-synthetic v2 (@challenger)" in message and "prediction set" not in message  # it has none
    assert confidences(challenger) == pytest.approx(pyfunc_probabilities(CHALLENGER, data), abs=1e-5)
    assert confidences(challenger) != pytest.approx(champion, abs=1e-3)
    out = client.predict(handle_file(path), CHAMPION, CHALLENGER, api_name="/compare")
    _, title_a, label_a, overlay_a, title_b, label_b, overlay_b, _ = out
    assert "v1 (@champion)" in title_a and "v2 (@challenger)" in title_b
    assert confidences(label_a) == pytest.approx(champion, abs=1e-5)
    assert confidences(label_b) == pytest.approx(confidences(challenger), abs=1e-5)
    assert images_in(overlay_a)[0][1].size == images_in(overlay_b)[0][1].size == (45, 37)


def test_a_batch_of_files_and_a_zip_gives_a_table_a_csv_and_thumbnails(served, client, tmp_path):
    from gradio_client import handle_file

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ward/a.png", encode(phantom(0), "PNG"))
        z.writestr("ward/b.webp", encode(phantom(2), "WEBP"))
        z.writestr("ward/readme.txt", "not an image")
        z.writestr("__MACOSX/ward/._a.png", "resource fork")
    files = [write(tmp_path, "one.jpg", encode(phantom(1), "JPEG")), write(tmp_path, "scans.zip", buf.getvalue())]
    message, table, extras, _ = client.predict([handle_file(f) for f in files], CHAMPION, api_name="/batch")
    frame = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(frame["file"]) == [
        "one.jpg",
        "scans.zip/ward/a.png",
        "scans.zip/ward/b.webp",
        "scans.zip/ward/readme.txt",
    ]
    assert list(frame["error"]) == ["", "", "", "not an image"] and message.startswith("3 images labelled")
    probs = frame[[f"prob_{c}" for c in CLASSES]].iloc[:3].astype(float).to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert "Prediction sets at 90 % coverage" in message
    assert list(frame["prediction_set"].iloc[:3]) == [champion_set(dict(zip(CLASSES, row))) for row in probs]
    csv = re.search(r'download="predictions.csv" href="data:text/csv;base64,([^"]+)"', extras).group(1)
    saved = pd.read_csv(io.BytesIO(base64.b64decode(csv)), keep_default_na=False)
    assert list(saved["file"]) == list(frame["file"]) and list(saved["label"]) == list(frame["label"])
    thumbnails = images_in(extras)
    assert len(thumbnails) == 3 and thumbnails[0][0].startswith("one.jpg: ")
    assert all(max(img.size) <= 160 for _, img in thumbnails)


def zip_of_zeros(path: Path, members: int, member_size: int, declared: int | None = None) -> Path:
    """A zip bomb built by hand (fast): ``members`` entries of ``member_size`` zeros, deflated once.

    ``declared`` is the uncompressed size the headers claim (default: the true one).
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packer.compress(bytes(member_size)) + packer.flush()
    crc, central, offset = zlib.crc32(bytes(member_size)), [], 0
    with open(path, "wb") as fh:
        for i in range(members):
            name = f"ward/{i:03d}.png".encode()
            # version 2.0, no flags, deflate, 1980-01-01 00:00, CRC, sizes, name and extra lengths
            fields = struct.pack(
                "<HHHHHIIIHH", 20, 0, 8, 0, 33, crc, len(packed), declared or member_size, len(name), 0
            )
            fh.write(b"PK\x03\x04" + fields + name + packed)
            central.append(
                b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, offset) + name
            )
            offset += 30 + len(name) + len(packed)
        directory = b"".join(central)
        fh.write(directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, members, members, len(directory), offset, 0))
    return path


def peak_rss_growth(action):
    """``action()``, and how far this process's resident memory peaked above where it stood before (bytes)."""

    def status(field: str) -> int:
        return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024

    before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    result = action()
    return result, status("VmHWM") - before


@pytest.mark.parametrize("member_mib", [20, 100])
def test_a_zip_bomb_under_the_upload_cap_is_refused_in_one_line_and_memory_stays_bounded(
    served, client, tmp_path, member_mib
):
    from gradio_client import handle_file

    bomb = zip_of_zeros(tmp_path / "scans.zip", 190, member_mib * 2**20)
    with zipfile.ZipFile(bomb) as archive:  # a real archive, under the upload cap, expanding past 2 GiB
        infos = archive.infolist()
        assert sum(i.file_size for i in infos) > 2 * 2**30 and archive.open(infos[-1]).read(2**20) == bytes(2**20)
    assert bomb.stat().st_size < 20 * 2**20
    (message, table, extras, _), growth = peak_rss_growth(
        lambda: client.predict([handle_file(str(bomb))], CHAMPION, api_name="/batch")
    )
    print(f"{bomb.stat().st_size / 1e6:.1f} MB zip of {member_mib} MiB members: peak RSS +{growth / 2**20:.0f} MiB")
    assert "scans.zip: more than 512 MiB of images in one batch" in message and "\n" not in message
    assert not table["data"] and not extras
    assert growth < 300 * 2**20
    ok = tmp_path / "ok.zip"  # then a valid upload is answered
    with zipfile.ZipFile(ok, "w") as z:
        z.writestr("a.png", encode(phantom(0), "PNG"))
    message, table, _, _ = client.predict([handle_file(str(ok))], CHAMPION, api_name="/batch")
    assert message.startswith("1 images labelled") and table["data"][0][0] == "ok.zip/a.png"


def _files(tmp_path: Path, n: int) -> list[Path]:
    return [Path(write(tmp_path, f"{i}.png", b"x")) for i in range(n)]


def _zip(tmp_path: Path, entries: dict[str, bytes]) -> list[Path]:
    with zipfile.ZipFile(tmp_path / "scans.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return [tmp_path / "scans.zip"]


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda t: _files(t, 201), "200.png: more than 200 images in one batch"),
        (lambda t: _zip(t, {f"d{i}/": b"" for i in range(2001)}), "scans.zip: more than 2000 entries"),
        (lambda t: _zip(t, {"big.png": bytes(21 * 2**20)}), "scans.zip/big.png: larger than 20 MiB"),
        (lambda t: [zip_of_zeros(t / "scans.zip", 1, 3 * 2**20, declared=1000)], "scans.zip: damaged or unsupported"),
    ],
    ids=["images", "zip-entries", "member-size", "member-lies-about-its-size"],
)
def test_a_batch_past_a_limit_is_refused_in_one_line_before_it_is_read(tmp_path, make, error):
    from medtune.app.uploads import UploadError, read_batch

    with pytest.raises(UploadError, match=re.escape(error)) as refused:
        read_batch(make(tmp_path))
    assert "\n" not in str(refused.value)


def test_bytes_are_counted_as_read_and_refused_at_the_first_byte_past_the_batch():
    from medtune.app.uploads import UploadError, _Batch

    stream = io.BytesIO(bytes(3 * 2**20))  # declares 10 bytes, holds 3 MiB
    with pytest.raises(UploadError, match="liar.png: more than 2 MiB of images in one batch"):
        _Batch(max_images=5, max_bytes=2 * 2**20).add("liar.png", 10, stream)
    assert stream.tell() == 2 * 2**20 + 1


def test_with_auth_the_page_asks_for_a_login_and_the_log_names_the_user_not_the_password(served, monkeypatch, caplog):
    import http.cookiejar
    import logging
    import urllib.error
    import urllib.parse

    from medtune.steps.app import run_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", os.environ["GRADIO_TEMP_DIR"])  # start() points it elsewhere: restored
    with caplog.at_level(logging.INFO, logger="medtune.app.server"):
        running = run_app(None, "127.0.0.1", free_port(), DEFAULT_MAX_FILE_SIZE, auth="alice:s3cret-pw", block=False)
    try:
        page = urllib.request.urlopen(running.url, timeout=30).read().decode()
        assert re.search(r'"auth_required":\s*true', page) and "Research use only" not in page
        with pytest.raises(urllib.error.HTTPError) as anonymous:  # no upload without a login
            urllib.request.urlopen(urllib.request.Request(f"{running.url}gradio_api/upload", data=b""), timeout=30)
        assert anonymous.value.code == 401
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        for password, code in (("wrong", 400), ("s3cret-pw", 200)):
            form = urllib.parse.urlencode({"username": "alice", "password": password}).encode()
            try:
                status = browser.open(f"{running.url}login", data=form, timeout=30).status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == code
        page = browser.open(running.url, timeout=30).read().decode()
        assert "Research use only" in page and not re.search(r'"auth_required":\s*true', page)
    finally:
        running.close()
    assert "reachable from this machine only (loopback), login required (user alice)" in caplog.text
    assert "s3cret-pw" not in caplog.text


def test_the_model_card_panel_shows_the_chosen_versions_card(served, client):
    card = client.predict(CHAMPION, api_name="/card")
    from medtune.model_card import SECTIONS

    assert all(f"## {s}" in card for s in SECTIONS) and "Research use only, not for diagnosis" in card
    assert "medtune-synthetic v1" in card
    assert "No model card was logged for medtune-synthetic v2" in client.predict(CHALLENGER, api_name="/card")
    assert "not in the registry" in client.predict("models:/medtune-synthetic/9", api_name="/card")


def test_nothing_uploaded_stays_on_the_server(served, client, tmp_path):
    data = encode(phantom(2, (50, 41)), "PNG")
    predict(client, write(tmp_path, "private.png", data))
    files = [p for p in served["app"].cache_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.stat().st_size]  # Gradio leaves an empty temp file per upload, no more


def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (``$MEDTUNE_TEST_ARTIFACTS``, else ./test-artifacts)."""
    path = Path(os.environ.get("MEDTUNE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser():
    import shutil

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: .ci/run installs them from Debian's packages")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1500",
        "--proxy-server=127.0.0.1:9",
    ):  # a dead proxy: Chromium reaches loopback (never proxied), nothing else
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    yield driver
    driver.quit()


def test_the_page_in_chromium_shows_the_label_overlay_and_warning_after_an_upload(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    data = encode(phantom(1, (180, 150)), "JPEG", quality=92)
    path = write(tmp_path, "phantom_scan.jpg", data)
    expected = pyfunc_probabilities(CHAMPION, data)
    label = max(expected, key=expected.get)
    browser.get(served["app"].url)
    wait = WebDriverWait(browser, 60)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))).send_keys(path)
    wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "phantom_scan.jpg"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result-images img")) == 2)
    page = browser.find_element(By.TAG_NAME, "body").text
    shot = artifacts_dir() / "app_screenshot.png"
    browser.save_screenshot(str(shot))
    assert f"{label} (" in browser.find_element(By.ID, "message").text
    assert "Research use only, not for diagnosis" in page and "Traceback" not in page
    sources = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "#result-images img")]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert Image.open(shot).size[0] >= 1000


def app_env(served) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{served['root'] / 'mlflow.db'}",
        MEDTUNE_HOME=str(served["root"]),
        TF_CPP_MIN_LOG_LEVEL="2",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MEDTUNE_APP_AUTH", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # left by an earlier test's set_experiment: the launcher goes to Default
    return env


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--model", f"models:/{NAME}@nope"], f"model=models:/{NAME}@nope: not in the registry"),
        (["--max-file-size", "lots"], "max_file_size=lots: expected a size such as 20mb"),
        (["--host", "0.0.0.0"], "host=0.0.0.0: the demo would be open to the network with no login; pass --auth"),
        (["--host", "0.0.0.0", "--auth", ":pw-only"], "auth: expected user:password"),
    ],
)
def test_the_app_command_names_a_bad_option_in_one_line(served, args, error):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "medtune"), "app", *args],
        env=app_env(served),
        cwd=served["root"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "pw-only" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"medtune: error: {error}")


@pytest.mark.slow
def test_the_app_entry_point_serves_the_page_and_leaves_no_run_running(served):
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(Path(__file__).resolve().parents[2]),
        "--env-manager",
        "local",
        "-e",
        "app",
        "-P",
        f"port={port}",
    ]
    log_file = served["root"] / "app.log"
    with open(log_file, "w") as log:
        server = subprocess.Popen(
            cmd, env=app_env(served), cwd=served["root"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log_file.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    if resp.status == 200 and b"medtune demo" in resp.read():
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no page in 120 s:\n{log_file.read_text()[-3000:]}"
            time.sleep(1)
        client = MlflowClient()
        launcher = client.search_runs(
            [client.get_experiment_by_name("Default").experiment_id], order_by=["attributes.start_time DESC"]
        )[0]
        assert launcher.info.status == "FINISHED" and "logs nothing" in launcher.data.tags["medtune.note"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    running = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="attributes.status = 'RUNNING'"
    )
    assert not running
