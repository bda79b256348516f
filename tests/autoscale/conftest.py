"""Fixtures: real HTTP exporters of the inference server's metric names, and a real Prometheus.

Each exporter is prometheus_client's own HTTP server on a free port with a private registry
holding the metrics trtop.names declares (the same types the server exposes), so the readers
are tested over real HTTP with real exposition text.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from wsgiref.simple_server import WSGIServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from trtop import names

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass
class Exporter:
    inflight: Gauge
    requests: Counter
    queue: Histogram
    busy: Histogram  # request durations: their sum's rate is the time-averaged in-flight
    port: int
    server: WSGIServer
    thread: Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


def _exporter() -> Exporter:
    registry = CollectorRegistry()
    inflight = Gauge(names.METRIC_INFLIGHT, "in-flight requests", ["model"], registry=registry)
    requests = Counter(names.METRIC_REQUESTS, "requests", ["model", "outcome"], registry=registry)
    queue = Histogram(names.METRIC_QUEUE_SECONDS, "queue seconds", ["model"], registry=registry)
    busy = Histogram(names.METRIC_REQUEST_SECONDS, "request seconds", ["model"], registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return Exporter(inflight, requests, queue, busy, server.server_port, server, thread)


@pytest.fixture
def exporters() -> Iterator[Callable[[], Exporter]]:
    made: list[Exporter] = []

    def make() -> Exporter:
        made.append(_exporter())
        return made[-1]

    yield make
    for e in made:
        e.server.shutdown()
        e.server.server_close()
        e.thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Exporter]], Prometheus]]:
    """Starts Debian's prometheus scraping {pod name: exporter} every second, labelled with
    namespace "serving" and the pod name, as kubernetes_sd relabelling would."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("no prometheus binary: apt-get install -y --no-install-recommends prometheus")
    started: list[Prometheus] = []

    def start(targets: dict[str, Exporter]) -> Prometheus:
        statics = "".join(
            f"      - targets: ['127.0.0.1:{e.port}']\n"
            f"        labels: {{namespace: serving, pod: {pod}}}\n" for pod, e in targets.items())
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          "scrape_configs:\n  - job_name: trtop-serving\n    static_configs:\n" + statics)
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        prom = Prometheus(f"http://127.0.0.1:{port}", proc)
        started.append(prom)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return prom
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready within 30 s")

    yield start
    for p in started:
        p.process.terminate()
        try:
            p.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.process.kill()
            p.process.wait()
