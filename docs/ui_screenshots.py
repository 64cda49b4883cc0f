"""Screenshots for docs/mlflow_ui.md, taken with headless Chromium against a real `mlflow server`.

Run by hand (not in CI), from the repository root, in the environment medtune is installed in:

    pip install playwright          # drives the system's Chromium (apt-get install chromium)
    python docs/ui_screenshots.py   # ~5 minutes on 2 CPU cores

It runs the whole pipeline on a small `synthetic` set through `mlflow run -e main` (in a temporary
project), starts `mlflow server` on that store, opens each page the guide describes and writes
docs/ui/*.png. Pass --home to reuse a project folder that already holds runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "ui"
PORT = 5055
TRIALS_ONLY = "tags.`medtune.step` = 'trial'"


def run_pipeline(home: Path, env: dict) -> None:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", "main",
           "--experiment-name", "medtune-synthetic",
           "-P", "trials=6", "-P", "search_epochs=3", "-P", "search_image_size=32", "-P", "epochs=6",
           "-P", "image_size=48"]
    subprocess.run(cmd, cwd=home, env=env, check=True)


def start_server(home: Path, env: dict) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", env["MLFLOW_TRACKING_URI"],
         "--host", "127.0.0.1", "--port", str(PORT)],
        cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2).read() == b"OK":
                return server
        except OSError:
            time.sleep(1)
    raise RuntimeError("mlflow server did not start")


def ids(tracking_uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("medtune-synthetic")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    by_step = {}
    for r in runs:
        by_step.setdefault(r.data.tags.get("medtune.step"), []).append(r)
    return {"exp": exp.experiment_id, "search": by_step["search"][0].info.run_id,
            "train": by_step["train"][0].info.run_id, "main": by_step["main"][0].info.run_id,
            "trials": [r.info.run_id for r in by_step["trial"]]}


def shoot(found: dict, only: list[str] | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{PORT}/#"
    exp = found["exp"]
    pages = [
        ("1_runs", f"/experiments/{exp}/runs?workflowType=machine_learning", "expand"),
        ("2_trials_chart", f"/experiments/{exp}/runs?workflowType=machine_learning&compareRunsMode=CHART"
                           f"&searchFilter={urllib.parse.quote(TRIALS_ONLY)}", None),
        ("3_parallel_coordinates",
         f"/compare-runs?runs={json.dumps(found['trials'])}&experiments={json.dumps([exp])}", None),
        ("4_gradcam", f"/experiments/{exp}/runs/{found['train']}/artifacts/evaluation/gradcam", "first_image"),
        # a file's own route keeps the file shown before (the Grad-CAM): click it in the tree instead
        ("5_confusion_matrix", f"/experiments/{exp}/runs/{found['train']}/artifacts/evaluation", "confusion_matrix.png"),
        ("6_pipeline_run", f"/experiments/{exp}/runs/{found['main']}", None),
        ("7_registry_aliases", "/models/medtune-synthetic", None),
    ]
    pages = [page for page in pages if not only or page[0] in only]
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                    args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        for name, route, action in pages:
            page.goto(base + route, wait_until="load")  # the runs page keeps polling: no "network idle"
            page.wait_for_timeout(5000)
            for text in ("Got it",):  # first-visit hints
                hint = page.get_by_text(text, exact=True)
                if hint.count():
                    hint.first.click(timeout=3000)
            close = page.get_by_role("button", name="Close")  # the assistant panel
            if close.count():
                close.first.click(timeout=3000)
            if action == "expand":  # show a search's trials under it
                expander = page.locator("button[data-component-id*='runnamecellrenderer']")  # the + before a parent
                if expander.count():
                    expander.first.click(timeout=3000)
            if action == "first_image":
                page.get_by_text(".png").first.click(timeout=5000)
            elif action and action.endswith(".png"):
                page.get_by_text(action, exact=True).first.click(timeout=5000)
            page.wait_for_timeout(2000)
            path = OUT / f"{name}.png"
            page.screenshot(path=str(path))
            written.append(path)
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="a project folder that already holds the runs")
    parser.add_argument("--only", nargs="+", help="the pictures to take again, e.g. 5_confusion_matrix")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="medtune-ui-"))
    env = {**os.environ, "MEDTUNE_HOME": str(home), "MEDTUNE_SYNTHETIC": os.environ.get("MEDTUNE_SYNTHETIC", "60,48"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # this medtune
    if args.home is None:
        run_pipeline(home, env)
    server = start_server(home, env)
    try:
        OUT.mkdir(parents=True, exist_ok=True)
        for path in shoot(ids(env["MLFLOW_TRACKING_URI"]), args.only):
            print(path.relative_to(REPO))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
