"""Start the demo safely: loopback by default, a login beyond it, no telemetry, an upload limit, a private cache.

Gradio reads ``GRADIO_ANALYTICS_ENABLED`` and ``GRADIO_TEMP_DIR`` when it builds components, so
both are set here before the page is built.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "20mb"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than localhost counts as not)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def audience(host: str, auth: tuple[str, str] | None) -> str:
    """Who can reach a demo served on ``host``, in words (never the password)."""
    where = "this machine only (loopback)" if is_loopback(host) else "the network"
    return f"{where}, login required (user {auth[0]})" if auth else f"{where}, no login"


@dataclass
class RunningApp:
    blocks: object  # gradio.Blocks
    url: str
    cache_dir: Path

    def close(self) -> None:
        """Stop the server and delete everything it cached (results of uploads)."""
        try:
            self.blocks.close()
        finally:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


def start(
    source,
    default_uri: str,
    compare_uri: str | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_file_size: str = DEFAULT_MAX_FILE_SIZE,
    auth: tuple[str, str] | None = None,
    block: bool = True,
) -> RunningApp:
    """Build the page for ``source`` and serve it on ``host:port``, behind Gradio's login when ``auth`` is given.

    With ``block`` the call serves until interrupted, then cleans up; otherwise it returns the
    running app (tests, scripts), which the caller closes.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no call home: offline use, patient data
    cache_dir = Path(tempfile.mkdtemp(prefix="medtune-app-"))  # mode 0700, removed on close
    os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)
    from medtune.app.ui import build_app

    blocks = build_app(source, default_uri, compare_uri)
    blocks.queue(default_concurrency_limit=1)
    try:
        _, url, _ = blocks.launch(
            server_name=host,
            server_port=port,
            max_file_size=max_file_size,
            auth=auth,
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            show_error=False,
            quiet=True,
            footer_links=[],
            run_history=False,
            enable_monitoring=False,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
        )
    except BaseException as exc:
        shutil.rmtree(cache_dir, ignore_errors=True)
        if isinstance(exc, OSError):
            from medtune.errors import ConfigError

            raise ConfigError(
                f"port={port}: cannot serve on {host}:{port} ({str(exc).split('.')[0]}); pass --port"
            ) from exc
        raise
    running = RunningApp(blocks, url, cache_dir)
    log.info(
        "medtune demo on %s, reachable from %s (uploads up to %s; Ctrl-C stops it)",
        url,
        audience(host, auth),
        max_file_size,
    )
    if block:
        try:
            blocks.block_thread()
        finally:
            running.close()
    return running
