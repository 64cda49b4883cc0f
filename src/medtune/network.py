"""Is a download host reachable from here, directly or through the HTTPS proxy the user set?

Hospitals and universities often reach the internet only through a proxy (``HTTPS_PROXY``);
kagglehub (requests) and Keras (urllib) download through it. So the quick check before a
download probes what the download will use: the proxy when one applies to the host (not
excluded by ``NO_PROXY``), else the host itself. Either way it answers within ``timeout``.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from urllib.parse import urlparse

DEFAULT_TIMEOUT_S = 3.0


def proxy_for(host: str, scheme: str = "https") -> tuple[str, int] | None:
    """``(host, port)`` of the proxy ``HTTPS_PROXY``/``https_proxy`` gives for ``host``, unless ``NO_PROXY`` excludes it."""
    url = urllib.request.getproxies_environment().get(scheme)
    if not url or urllib.request.proxy_bypass_environment(host):
        return None
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def route(host: str, port: int = 443) -> str:
    """How a connection to ``host`` goes, for messages: ``host:443`` or ``host:443 via proxy p:3128``."""
    proxy = proxy_for(host)
    return f"{host}:{port}" + (f" via proxy {proxy[0]}:{proxy[1]}" if proxy else "")


def reachable(host: str, port: int = 443, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` (or to the proxy that applies) opens within ``timeout``.

    Name resolution counts in the timeout (the probe runs in a daemon thread), so a machine
    without network answers ``False`` in at most ``timeout`` seconds.
    """
    target = proxy_for(host) or (host, port)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="medtune-net-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
