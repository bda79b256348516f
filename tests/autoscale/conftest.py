"""Fixtures: real HTTP exporters of the inference server's metric names, and a real Prometheus.

Each exporter is prometheus_client's own HTTP server on a free port with a private registry
holding the metrics trtop.names declares (the same types the server exposes), so the readers
are tested over real HTTP with real exposition text.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from wsgiref.simple_server import WSGIServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tests.prometheus import Prometheus, start_prometheus
from trtop import names


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


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Exporter]], Prometheus]]:
    """Starts Debian's prometheus scraping {pod name: exporter} every second, labelled with
    namespace "serving" and the pod name, as kubernetes_sd relabelling would."""
    started: list[Prometheus] = []

    def start(targets: dict[str, Exporter]) -> Prometheus:
        statics = "".join(
            f"      - targets: ['127.0.0.1:{e.port}']\n"
            f"        labels: {{namespace: serving, pod: {pod}}}\n" for pod, e in targets.items())
        started.append(start_prometheus("  - job_name: trtop-serving\n    static_configs:\n" + statics, tmp_path))
        return started[-1]

    yield start
    for p in started:
        p.stop()
