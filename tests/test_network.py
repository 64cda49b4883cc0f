"""The quick network check goes where the download goes: through HTTPS_PROXY unless NO_PROXY says not."""

from __future__ import annotations

import socket
import time

import pytest

from medtune import network
from medtune.datasets import registry

HOST = "files.kaggle.invalid"  # never resolves: only a proxy can make it "reachable"


@pytest.fixture
def proxy(monkeypatch):
    """A local TCP listener standing in for the site's HTTPS proxy."""
    for key in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield server
    server.close()


def test_behind_a_proxy_the_host_counts_as_reachable(proxy):
    assert network.proxy_for(HOST) == ("127.0.0.1", proxy.getsockname()[1])
    assert network.reachable(HOST, timeout=2) is True
    assert registry.network_available(HOST, timeout=2) is True
    assert network.route(HOST) == f"{HOST}:443 via proxy 127.0.0.1:{proxy.getsockname()[1]}"


def test_no_proxy_sends_the_probe_direct(proxy, monkeypatch):
    monkeypatch.setenv("NO_PROXY", ".kaggle.invalid,localhost")
    assert network.proxy_for(HOST) is None
    assert network.reachable(HOST, timeout=2) is False
    assert network.route(HOST) == f"{HOST}:443"


def test_a_dead_proxy_is_no_network_within_the_timeout(proxy, monkeypatch):
    port = proxy.getsockname()[1]
    proxy.close()  # nothing listens there any more
    t0 = time.perf_counter()
    assert network.reachable(HOST, timeout=1) is False
    assert time.perf_counter() - t0 < 2


def test_missing_dataset_message_names_the_proxy_it_tried(proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path))
    monkeypatch.delenv("MEDTUNE_DATA_DIR", raising=False)
    port = proxy.getsockname()[1]
    proxy.close()
    with pytest.raises(registry.DatasetNotFound, match=f"no network to www.kaggle.com:443 via proxy 127.0.0.1:{port}"):
        registry.resolve_dataset("dermnet")
