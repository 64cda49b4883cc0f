"""A hostile client against `mlflow models serve` of a medtune model (a real server on loopback).

Every bad request gets a 4xx with one short message and no traceback, in bounded time; the
server keeps answering, and 32 concurrent valid requests of 4 images each all succeed. The
limits are serving.MAX_ROWS (the scoring server's alone), MAX_IMAGE_BYTES and MAX_IMAGE_PIXELS.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from medtune import serving
from medtune.datasets.synthetic import generate
from tests import test_serving
from tests.test_serving import encode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("test_serving_abuse"),
]  # one worker: the module's fixture built once
logged = test_serving.logged  # the module fixture: a tiny model registered as medtune-serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(logged):
    """`mlflow models serve` of the registered tiny model, as a user starts it."""
    port = free_port()
    log = Path(logged["root"]) / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{logged['root'] / 'mlflow.db'}"}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/medtune-serving/1", "--env-manager", "local"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=out, stderr=out, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the scoring server did not answer /ping: " + log.read_text()[-3000:])
        yield {"url": url, "proc": proc, "log": log}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def post(url: str, body: bytes, content_type: str = "application/json", timeout: float = 120) -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def frame(rows: list) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}}).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bomb_png(side: int = 30_000) -> bytes:
    """A real PNG of side x side 1-bit pixels (900 MP), about 100 KB encoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def good_images(n: int) -> list[str]:
    x, _, _ = generate(1, 40, seed=5)
    return [b64(encode(Image.fromarray(x[i % len(x)]), "PNG")) for i in range(n)]


def jpeg() -> bytes:
    x, _, _ = generate(1, 64, seed=6)
    return encode(Image.fromarray(x[0]), "JPEG", quality=90)


HOSTILE = {
    "garbage base64": (frame(["***not base64***"]), "base64"),
    "non-image bytes": (frame([b64(b"%PDF-1.4 not an image at all")]), "not an image"),
    "truncated jpeg": (frame([b64(jpeg()[:300])]), "truncated"),
    "decompression bomb": (frame([b64(bomb_png())]), "decompression bomb"),
    "75 MB payload": (frame(["A" * 75_000_000]), "at most"),
    "too many images": (frame(good_images(1) * (serving.MAX_ROWS + 1)), f"at most {serving.MAX_ROWS}"),
    "wrong column": (json.dumps({"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}).encode(), "image"),
    "number instead of bytes": (frame([12345]), "not compatible with model signature"),
    "malformed json": (b'{"dataframe_split": {"columns": ["image"], "data": [["abc"', "valid JSON"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_each_hostile_request_gets_a_short_4xx_and_the_server_keeps_answering(server, case):
    body, expected = HOSTILE[case]
    status, text = post(server["url"], body)
    assert 400 <= status < 500, (status, text[:500])
    message = json.loads(text).get("message", text) if text.startswith("{") else text
    assert expected.lower() in message.lower(), message[:500]
    assert len(message) < 600 and "Traceback" not in text and "stack_trace" not in text, text[:1000]
    status, text = post(server["url"], frame(good_images(1)))  # still answering, and right
    assert status == 200 and "label" in text, text[:500]


def test_32_concurrent_requests_of_4_images_all_succeed(server):
    body = frame(good_images(4))
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: post(server["url"], body), range(32)))
    assert [status for status, _ in answers] == [200] * 32
    for _, text in answers:
        rows = json.loads(text)["predictions"]
        assert len(rows) == 4 and all(r["label"] in ("crescent", "disc", "ring tumour", "speckled") for r in rows)
        assert all(r["prediction_set"][0] == r["label"] for r in rows)  # the set as a JSON list, top class first
    assert server["proc"].poll() is None
