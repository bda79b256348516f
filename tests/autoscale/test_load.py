"""Load readers over real HTTP: pods' /metrics served by prometheus_client, and a real Prometheus."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiohttp import web

from tests.autoscale.conftest import Exporter
from tests.prometheus import Prometheus, free_port
from trtop.api.spec import ScalingMetric
from trtop.autoscale import Observation, ScalingHistory, ScalingPolicy, decide
from trtop.autoscale.load import (
    DirectScraper, PodEndpoint, PrometheusReader, build_queries, endpoint_from_pod, open_load_source,
)


def endpoint(name: str, e: Exporter | None, ready: bool = True, url: str | None = None) -> PodEndpoint:
    return PodEndpoint(name, "serving", ready, url or (e.url if e else None))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_direct_scrape_reads_inflight_from_each_ready_pod(exporters: Callable[[], Exporter]) -> None:
    a, b = exporters(), exporters()
    a.inflight.labels(model="m").set(3)
    b.inflight.labels(model="m").set(5)
    b.inflight.labels(model="other").set(1)
    pods = [endpoint("a", a), endpoint("b", b), endpoint("c", None, ready=False)]
    reading = await DirectScraper().read(pods, "inflight")
    assert [(s.name, s.ready, s.value) for s in reading.samples] == [("a", True, 3.0), ("b", True, 6.0),
                                                                     ("c", False, None)]
    assert reading.errors == ()
    assert all(s.sampled_at and abs(s.sampled_at - time.time()) < 30 for s in reading.samples[:2])


async def test_direct_scrape_computes_rps_and_queue_time_from_two_scrapes(
        exporters: Callable[[], Exporter]) -> None:
    a = exporters()
    a.inflight.labels(model="m").set(0)
    a.requests.labels(model="m", outcome="ok").inc(100)
    clock = Clock(1000.0)
    scraper = DirectScraper(clock=clock)
    pods = [endpoint("a", a)]
    first = await scraper.read(pods, "rps")
    assert first.samples[0].value is None  # a rate needs a previous scrape
    a.requests.labels(model="m", outcome="ok").inc(25)
    a.requests.labels(model="m", outcome="error").inc(5)
    for v in (0.2, 0.4, 0.6):
        a.queue.labels(model="m").observe(v)
    clock.t = 1010.0
    second = await scraper.read(pods, "rps")
    assert second.samples[0].value == pytest.approx(3.0)
    # queue-time uses the same remembered scrape (the previous one, at 1010).
    a.queue.labels(model="m").observe(1.0)
    clock.t = 1020.0
    third = await scraper.read(pods, "queue-time")
    assert third.samples[0].value == pytest.approx(1000.0)  # milliseconds


async def test_unreachable_and_wrong_endpoints_are_missing_with_a_reason(exporters: Callable[[], Exporter]) -> None:
    a = exporters()
    a.inflight.labels(model="m").set(2)
    app = web.Application()
    app.router.add_get("/html", lambda _: web.Response(text="<html>hello</html>", content_type="text/html"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other = f"http://127.0.0.1:{runner.addresses[0][1]}"
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    pods = [endpoint("a", a), endpoint("dead", None, url=dead), endpoint("notfound", None, url=other + "/metrics"),
            endpoint("html", None, url=other + "/html"), endpoint("noip", None)]
    try:
        reading = await DirectScraper(timeout_seconds=2.0).read(pods, "inflight")
    finally:
        await runner.cleanup()
    assert [s.value for s in reading.samples] == [2.0, None, None, None, None]
    errors = "\n".join(reading.errors)
    assert len(reading.errors) == 4, errors
    assert f"reading {dead} of pod serving/dead" in errors
    assert "pod serving/notfound: HTTP 404" in errors
    assert "pod serving/html: not Prometheus text format" in errors
    assert "pod serving/noip is ready but has no IP yet" in errors


async def test_direct_readings_drive_a_decision(exporters: Callable[[], Exporter]) -> None:
    """End to end on one host: two pods at 10 in flight, target 4 -> 5 replicas."""
    pods_e = [exporters(), exporters()]
    for e in pods_e:
        e.inflight.labels(model="m").set(10)
    reading = await DirectScraper().read([endpoint(f"p{i}", e) for i, e in enumerate(pods_e)], "inflight")
    d, _ = decide(ScalingPolicy(target=4.0, max_replicas=8), Observation(time.time(), 2, reading.samples),
                  ScalingHistory())
    assert d.desired_replicas == 5, d.reason


def test_endpoint_from_pod() -> None:
    pod = {"metadata": {"name": "p-1", "namespace": "ns"},
           "status": {"phase": "Running", "podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}}
    assert endpoint_from_pod(pod, 8000) == PodEndpoint("p-1", "ns", True, "http://10.0.0.7:8000/metrics")
    starting = {"metadata": {"name": "p-2", "namespace": "ns"}, "status": {"phase": "Pending"}}
    assert endpoint_from_pod(starting, 8000) == PodEndpoint("p-2", "ns", False, None)
    v6 = {"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running", "podIP": "fd00::5"}}
    assert endpoint_from_pod(v6, 80) == PodEndpoint("p", "ns", False, "http://[fd00::5]:80/metrics")
    gone = {"metadata": {"name": "p", "deletionTimestamp": "2024-01-01T00:00:00Z"}, "status": {"phase": "Running"}}
    assert endpoint_from_pod(gone, 80) is None


def test_open_load_source_picks_by_url() -> None:
    assert isinstance(open_load_source(""), DirectScraper)
    assert isinstance(open_load_source("http://prometheus:9090", rate_window="30s"), PrometheusReader)


@pytest.mark.parametrize("metric,parts", [
    ("inflight", ['sum by (pod) (rate(trtop_inference_request_duration_seconds_sum{namespace="ns",pod=~"a-1|b-2"}[30s])',
                  'unless sum by (pod) (trtop_inference_request_duration_seconds_sum{',
                  'sum by (pod) (trtop_inference_inflight_requests{namespace="ns",pod=~"a-1|b-2"})']),
    ("rps", ["rate(trtop_inference_requests_total{", "[30s]", "unless sum by (pod) (trtop_inference_requests_total"]),
    ("queue-time", ["1000 * sum by (pod) (rate(trtop_inference_queue_seconds_sum{", ") / sum by (pod) (rate(trtop_inference_queue_seconds_count{"]),
])
def test_build_queries(metric: ScalingMetric, parts: list[str]) -> None:
    value, scraped = build_queries(metric, "ns", ["a-1", "b-2"], rate_window="30s")
    for part in parts:
        assert part in value
    assert scraped.startswith("max by (pod) (timestamp(trtop_inference_inflight_requests{")


def test_build_queries_refuses_names_that_would_inject_promql() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes object name"):
        build_queries("inflight", "ns", ['a"}) or vector(1'])


async def test_prometheus_unreachable_gives_missing_values_and_an_error() -> None:
    reader = PrometheusReader(f"http://127.0.0.1:{free_port()}", timeout_seconds=2.0)
    reading = await reader.read([PodEndpoint("a", "ns", True, None)], "inflight")
    assert reading.samples[0].value is None
    assert len(reading.errors) == 1 and "querying Prometheus" in reading.errors[0]


@pytest.mark.slow
async def test_against_a_real_prometheus(exporters: Callable[[], Exporter],
                                         prometheus: Callable[[dict[str, Exporter]], Prometheus]) -> None:
    a, b, idle = exporters(), exporters(), exporters()
    a.inflight.labels(model="m").set(3)
    b.inflight.labels(model="m").set(7)
    idle.inflight.labels(model="m").set(0)  # served nothing: no counter or histogram series at all
    b.requests.labels(model="m", outcome="ok")  # exists at 0
    prom = prometheus({"pod-a": a, "pod-b": b, "pod-idle": idle})
    stop = False
    sent: list[tuple[float, int]] = []  # (time, requests so far): the true rate to compare with

    async def traffic() -> None:
        # pod-a: ~40 requests/s (less on a busy machine), each waited 0.25 s in the queue and
        # took 0.1 s in all: ~4 in flight on average, while its gauge reads 3 at every scrape.
        n = 0
        while not stop:
            a.requests.labels(model="m", outcome="ok").inc(2)
            for _ in range(2):
                a.queue.labels(model="m").observe(0.25)
                a.busy.labels(model="m").observe(0.1)
            n += 2
            sent.append((time.monotonic(), n))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(traffic())
    reader = PrometheusReader(prom.url, rate_window="5s")
    pods = [PodEndpoint(n, "serving", True, None) for n in ("pod-a", "pod-b", "pod-idle")]
    pods.append(PodEndpoint("pod-starting", "serving", False, None))
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:  # until Prometheus has two scrapes of the counter
            if (await reader.read(pods, "rps")).samples[0].value:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(6)  # a full 5 s rate window of steady traffic
        rps = await reader.read(pods, "rps")
        recent = [(t, n) for t, n in sent if t >= sent[-1][0] - 5]
        true_rate = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        values = {s.name: s.value for s in rps.samples}
        inflight = await reader.read(pods, "inflight")
        queue = await reader.read(pods, "queue-time")
    finally:
        stop = True
        await task
    assert rps.errors == () and inflight.errors == () and queue.errors == ()
    busy = {s.name: s.value for s in inflight.samples}
    assert {k: v for k, v in busy.items() if k != "pod-a"} == {"pod-b": 7.0, "pod-idle": 0.0, "pod-starting": None}
    assert busy["pod-a"] == pytest.approx(0.1 * true_rate, rel=0.25)  # time-averaged, not the gauge's 3
    assert values["pod-a"] == pytest.approx(true_rate, rel=0.25) and values["pod-b"] == 0.0 and values["pod-idle"] == 0.0
    q = {s.name: s.value for s in queue.samples}
    assert q["pod-a"] == pytest.approx(250.0) and q["pod-b"] == 0.0 and q["pod-idle"] == 0.0
    # Sample times are the scrapes' times (Prometheus' clock), recent.
    assert all(abs(s.sampled_at - time.time()) < 10 for s in inflight.samples if s.sampled_at)
    assert await reader.query_scalar('sum(trtop_inference_inflight_requests{namespace="serving"})') == 10.0
    assert await reader.query_scalar("absent_metric_name_xyz") is None
    d, _ = decide(ScalingPolicy(target=6.0, max_replicas=10, scale_down_window_seconds=0),
                  Observation(time.time(), 4, inflight.samples), ScalingHistory())
    # (~4 + 7 + 0) over 3 ready pods = ~3.7/pod against 6: 3 pods' worth of load fits in 2; the
    # not-ready pod is ignored on a scale-down.
    assert d.desired_replicas == 2, d.reason


async def test_huge_and_absurd_metrics_are_bounded(exporters: Callable[[], Exporter]) -> None:
    """A pod's /metrics is a tenant's output: read at most MAX_METRICS_BYTES, values clamped finite."""
    from trtop.autoscale.load import MAX_METRICS_BYTES
    from trtop.names import METRIC_INFLIGHT

    app = web.Application()
    app.router.add_get("/big", lambda _: web.Response(text="#" * (MAX_METRICS_BYTES + 10) + "\n"))
    app.router.add_get("/huge", lambda _: web.Response(text=f"{METRIC_INFLIGHT} 1e308\n"))
    app.router.add_get("/nan", lambda _: web.Response(text=f"{METRIC_INFLIGHT} NaN\n"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pods = [endpoint(n, None, url=f"{base}/{p}") for n, p in (("big", "big"), ("h1", "huge"), ("h2", "huge"),
                                                              ("nan", "nan"))]
    try:
        reading = await DirectScraper(timeout_seconds=5.0).read(pods, "inflight")
    finally:
        await runner.cleanup()
    assert [s.value for s in reading.samples] == [None, 1e9, 1e9, None]
    assert "larger than" in reading.errors[0]
    decision, _ = decide(ScalingPolicy(min_replicas=1, max_replicas=8, target=4.0),
                         Observation(at=time.time(), current_replicas=2, pods=reading.samples), ScalingHistory())
    assert 2 < decision.desired_replicas <= 8  # scaled up, within the rate limit and maxReplicas
