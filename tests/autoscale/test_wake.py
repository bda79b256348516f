"""The way back from zero: the builtin autoscaler asks the platform's wake query, of a real Prometheus, only for an
object at zero that may be there, and scales it to ceil(waiting / target); nothing waiting leaves it at zero, and a
Prometheus that does not answer leaves it at zero for the round without stopping the other objects."""
from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.prometheus import Prometheus, free_port
from tests.autoscale.test_shell_guard import deployment
from trtop import names
from trtop.autoscale.load import PrometheusReader
from trtop.config import Settings
from trtop.handlers import autoscaling
from trtop.k8s.cache import ClusterCache

WAKE = 'sum(gateway_requests_waiting{namespace="$namespace", model="$name"})'


def md(name: str, *, min_replicas: int, desired: int) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.KIND,
            "metadata": {"name": name, "namespace": "serving", "uid": f"u-{name}", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"model": {"uri": "s3://m/a"},
                     "scaling": {"mode": "builtin", "minReplicas": min_replicas, "maxReplicas": 8, "target": 4}},
            "status": {"desiredReplicas": desired}}


@pytest.fixture
def gateway() -> Any:
    """A gateway's exporter: requests waiting per model (Prometheus labels it namespace "serving")."""
    registry = CollectorRegistry()
    waiting = Gauge("gateway_requests_waiting", "requests held while no replica serves", ["model"],
                    registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield SimpleNamespace(waiting=waiting, port=server.server_port)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def scraped(prom: Prometheus, series: str, value: float) -> None:
    query = urllib.parse.urlencode({"query": series})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prom.url}/api/v1/query?{query}", timeout=5) as r:
            if f'"{value:g}"' in r.read().decode():
                return
        time.sleep(0.3)
    raise AssertionError(f"Prometheus never scraped {series} = {value}")


def run_once(monkeypatch: pytest.MonkeyPatch, settings: Settings, wake: PrometheusReader | None,
             objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cache = ClusterCache()
    for name, body in objects.items():
        cache.on_model_deployment("ADDED", body)
        unit = deployment(name, body["metadata"]["uid"])
        unit["metadata"]["namespace"] = "serving"
        unit["spec"]["replicas"] = body["status"]["desiredReplicas"]
        cache.on_deployment("ADDED", unit)
    monkeypatch.setattr(autoscaling, "CACHE", cache)
    decided: dict[str, Any] = {}
    monkeypatch.setattr(autoscaling, "_apply",
                        lambda body, decision, errors, _s: decided.setdefault(body["metadata"]["name"],
                                                                               (decision, errors)))
    source = PrometheusReader(settings.prometheus_url, timeout_seconds=2.0)
    asyncio.run(autoscaling.autoscale_once(settings, source, wake))
    return decided


def test_load_waiting_in_front_of_an_object_at_zero_wakes_it(
        monkeypatch: pytest.MonkeyPatch, prometheus: Callable[..., Prometheus], gateway: Any) -> None:
    prom = prometheus({"gateway-0": gateway})
    gateway.waiting.labels("resnet").set(6)
    gateway.waiting.labels("bert").set(0)
    gateway.waiting.labels("nan").set(float("nan"))  # a query's 0/0
    scraped(prom, 'gateway_requests_waiting{model="resnet"}', 6)
    settings = Settings(prometheus_url=prom.url, wake_query=WAKE)
    wake = PrometheusReader(prom.url)
    decided = run_once(monkeypatch, settings, wake, {
        "resnet": md("resnet", min_replicas=0, desired=0),  # 6 waiting, target 4: two replicas
        "bert": md("bert", min_replicas=0, desired=0),      # nothing waiting: stays at zero
        "other": md("other", min_replicas=0, desired=0),    # no series at all: stays at zero
        "nan": md("nan", min_replicas=0, desired=0),        # NaN is not load: stays at zero
    })
    resnet, errors = decided["resnet"]
    assert resnet.changed and resnet.desired_replicas == 2 and errors == ()
    assert "6 in-flight requests waiting while scaled to zero" in resnet.reason, resnet.reason
    for name in ("bert", "other", "nan"):
        assert not decided[name][0].changed and decided[name][0].desired_replicas == 0
    # The same load without the wake query (an operator that has none): nothing asks, nothing wakes.
    decided = run_once(monkeypatch, Settings(prometheus_url=prom.url), None,
                       {"resnet": md("resnet", min_replicas=0, desired=0)})
    assert decided["resnet"][0].desired_replicas == 0


def test_a_prometheus_that_does_not_answer_leaves_it_at_zero_and_says_why(
        monkeypatch: pytest.MonkeyPatch, prometheus: Callable[..., Prometheus], gateway: Any) -> None:
    """It stays at zero that round and the others carry on; the object's owner gets one Warning Event per streak of
    failures (the platform's setting, credentials left out), and the next streak another."""
    port = free_port()
    down = f"http://watcher:s3cret@127.0.0.1:{port}"
    settings = Settings(prometheus_url=down, wake_query=WAKE)
    posted: list[tuple[str, str, str]] = []
    monkeypatch.setattr(autoscaling, "post_event",
                        lambda body, type_, reason, message: posted.append((body["metadata"]["name"], reason, message)))
    monkeypatch.setattr(autoscaling, "STATES", {})
    objects = {"resnet": md("resnet", min_replicas=0, desired=0), "bert": md("bert", min_replicas=1, desired=1)}
    for _ in range(2):
        decided = run_once(monkeypatch, settings, PrometheusReader(down, timeout_seconds=1.0), objects)
        resnet, errors = decided["resnet"]
        assert not resnet.changed and resnet.desired_replicas == 0
        assert any(e.startswith("wake query: querying Prometheus") for e in errors), errors
        assert "bert" in decided and not any(e.startswith("wake query") for e in decided["bert"][1])
    ((name, reason, message),) = posted  # once for two failed rounds, and only for the object at zero
    assert (name, reason) == ("resnet", "WakeQueryFailed") and "cannot start a replica" in message
    assert "s3cret" not in message and "operator.wakeQuery" in message
    # Prometheus answers (nothing waiting): the streak ends; a later failure is a new one.
    prom = prometheus({"gateway-0": gateway})
    run_once(monkeypatch, Settings(prometheus_url=prom.url, wake_query=WAKE), PrometheusReader(prom.url), objects)
    run_once(monkeypatch, settings, PrometheusReader(down, timeout_seconds=1.0), objects)
    assert [r for _, r, _ in posted] == ["WakeQueryFailed", "WakeQueryFailed"]
    # Woken meanwhile (not asked), then at zero again with the query still failing: a new streak too.
    run_once(monkeypatch, settings, PrometheusReader(down, timeout_seconds=1.0),
             {**objects, "resnet": md("resnet", min_replicas=0, desired=1)})
    run_once(monkeypatch, settings, PrometheusReader(down, timeout_seconds=1.0), objects)
    assert [r for _, r, _ in posted] == ["WakeQueryFailed"] * 3
