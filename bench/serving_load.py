"""Benchmark: a registered medtune model under `mlflow models serve`, hostile and valid clients.

Serves a registered model (default: the champion the budget benchmark registered for brain_mri)
exactly as the README does, then, in one run:

* each hostile request of tests/test_serving_abuse.py once: status, milliseconds, the answer;
* ``--rounds`` rounds of ``--concurrency`` concurrent requests of ``--per-request`` real images:
  images per second served, latency p50 / p95, and the scoring server's peak resident memory.

    python bench/serving_load.py                      # brain_mri champion of bench/budget.py
    python bench/serving_load.py --home ~/proj --model models:/medtune-covid@champion --images DIR
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, machine, shared_data, table  # noqa: E402
from tests.test_serving_abuse import HOSTILE, frame, free_port, post  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    """The largest VmHWM of ``pid`` and its children (uvicorn serves from a child process)."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    peak = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


def serve(home: Path, model: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # its uvicorn
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow), "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out, cwd=home, start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=str(Path.home() / ".cache" / "medtune-bench" / "budget-brain_mri"))
    parser.add_argument("--model", default="models:/medtune-brain_mri@champion")
    parser.add_argument("--images", default=None, help="folder of images (default ../shared/data/brain_mri/Training)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--per-request", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    home = Path(args.home).expanduser()
    images = Path(args.images) if args.images else shared_data("brain_mri") / "Training"
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = files[:: max(1, len(files) // (args.concurrency * args.per_request))]
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in files]

    port = free_port()
    log = home / "serve-bench.log"
    proc = serve(home, args.model, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                sys.exit(f"the scoring server exited: {log.read_text()[-2000:]}")
            try:
                import urllib.request

                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        startup = time.perf_counter() - t0

        hostile = []
        for case, (body, _) in HOSTILE.items():
            t = time.perf_counter()
            status, text = post(url, body)
            message = json.loads(text).get("message", text) if text.startswith("{") else text
            hostile.append(
                {
                    "request": case,
                    "status": status,
                    "ms": round(1000 * (time.perf_counter() - t)),
                    "answer": message[:90],
                }
            )

        bodies = [
            frame(encoded[(i * args.per_request + k) % len(encoded)] for k in range(args.per_request))
            for i in range(args.concurrency)
        ]
        post(url, bodies[0])  # warm-up: the first predict traces the graph
        latencies, statuses = [], []

        def one(body: bytes) -> None:
            t = time.perf_counter()
            status, _ = post(url, body)
            latencies.append(time.perf_counter() - t)
            statuses.append(status)

        t = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            for _ in range(args.rounds):
                list(pool.map(one, bodies))
        seconds = time.perf_counter() - t
        n_images = args.rounds * args.concurrency * args.per_request
        latencies.sort()
        load = {
            "model": args.model,
            "requests": len(statuses),
            "ok": statuses.count(200),
            "images": n_images,
            "seconds": round(seconds, 1),
            "images_per_s": round(n_images / seconds, 1),
            "latency_p50_s": round(statistics.median(latencies), 2),
            "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
            "server_peak_rss_mib": round(peak_rss_mib(proc.pid)),
            "startup_s": round(startup, 1),
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    print(f"machine: {machine()}")
    print(table(hostile, "hostile requests (one each)"))
    print(table([load], f"{args.concurrency} concurrent requests x {args.per_request} images, {args.rounds} rounds"))
    out = home / "serving_load.json"
    out.write_text(json.dumps({"hostile": hostile, "load": load}, indent=1))
    print(f"written: {out} (repo {REPO.name})")


if __name__ == "__main__":
    main()
