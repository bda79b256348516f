"""Probes: named ports, HTTP and TCP checks against a real local server, thresholds."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from trtop_dev.localrunner.podspec import PodSpecError
from trtop_dev.localrunner.probes import Prober, check, resolve_port

CONTAINER = {"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.5", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_resolve_port() -> None:
    assert resolve_port("http", CONTAINER) == 8000
    assert resolve_port(9000, CONTAINER) == 9000
    assert resolve_port("9001", CONTAINER) == 9001
    with pytest.raises(PodSpecError, match="names no port"):
        resolve_port("grpc", CONTAINER)


def test_http_and_tcp_checks_hit_the_pod_address(server: int) -> None:
    container = {"name": "c", "ports": [{"name": "web", "containerPort": server}]}
    assert check({"httpGet": {"path": "/ok", "port": "web"}}, container, "127.0.0.5")[0]
    ok, why = check({"httpGet": {"path": "/bad", "port": "web"}}, container, "127.0.0.5")
    assert not ok and "HTTP 503" in why
    assert not check({"httpGet": {"path": "/ok", "port": server}}, container, "127.0.0.6")[0]
    assert check({"tcpSocket": {"port": server}}, container, "127.0.0.5")[0]
    assert check({"exec": {"command": ["false"]}}, container, "127.0.0.5") == (True, "")


def test_prober_thresholds_and_timing() -> None:
    prober = Prober({"initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2, "successThreshold": 2}, 100.0)
    assert not prober.due(104.9) and prober.due(105.0)
    prober.record(True, "", 105.0)
    assert not prober.passing and prober.next_at == 107.0
    prober.record(True, "", 107.0)
    assert prober.passing
    prober.record(False, "down", 109.0)
    assert prober.passing and not prober.failed_out
    prober.record(False, "down", 111.0)
    assert not prober.passing and prober.failed_out and prober.last_error == "down"


def test_a_probe_on_an_unknown_named_port_fails_instead_of_raising() -> None:
    ok, why = check({"httpGet": {"path": "/", "port": "metrics"}}, CONTAINER, "127.0.0.5")
    assert not ok and "names no port" in why
