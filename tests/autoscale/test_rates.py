"""parse_totals / counter_increase / pod_load: the pure rate math over /metrics text."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from trtop import names
from trtop.autoscale.rates import MetricsFormatError, MetricTotals, Scrape, counter_increase, parse_totals, pod_load


def exposition(inflight: dict[str, float], requests: dict[tuple[str, str], float],
               queued: dict[str, list[float]]) -> str:
    """Real exposition text from prometheus_client for the server's metric names."""
    r = CollectorRegistry()
    g = Gauge(names.METRIC_INFLIGHT, "in flight", ["model"], registry=r)
    c = Counter(names.METRIC_REQUESTS, "requests", ["model", "outcome"], registry=r)
    h = Histogram(names.METRIC_QUEUE_SECONDS, "queue", ["model"], registry=r)
    for model, v in inflight.items():
        g.labels(model=model).set(v)
    for (model, outcome), v in requests.items():
        c.labels(model=model, outcome=outcome).inc(v)
    for model, values in queued.items():
        for v in values:
            h.labels(model=model).observe(v)
    return generate_latest(r).decode()


def test_parse_totals_sums_every_label_set() -> None:
    text = exposition({"a": 2, "b": 3}, {("a", "ok"): 10, ("a", "error"): 2, ("b", "ok"): 5},
                      {"a": [0.1, 0.3], "b": [0.5]})
    t = parse_totals(text)
    assert (t.inflight, t.requests, t.queue_count) == (5.0, 17.0, 3.0)
    assert t.queue_seconds_sum == pytest.approx(0.9)


def test_parse_totals_of_an_idle_server_is_zero() -> None:
    assert parse_totals(exposition({"a": 0}, {}, {})) == MetricTotals(0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("text,message", [
    ("<html>not metrics</html>", "not Prometheus text"),
    ("some_other_metric 1\n", "no trtop_inference_inflight_requests"),
])
def test_parse_totals_rejects_what_is_not_the_servers_metrics(text: str, message: str) -> None:
    with pytest.raises(MetricsFormatError, match=message):
        parse_totals(text)


@pytest.mark.parametrize("prev,cur,want", [(10, 25, 15), (10, 10, 0), (100, 7, 7)], ids=["grew", "flat", "reset"])
def test_counter_increase(prev: float, cur: float, want: float) -> None:
    assert counter_increase(prev, cur) == want


def scrape(at: float, inflight: float = 0, requests: float = 0, qsum: float = 0, qcount: float = 0,
           busy: float = 0) -> Scrape:
    return Scrape(at, MetricTotals(inflight, requests, qsum, qcount, busy))


def test_inflight_needs_one_scrape_rates_need_two() -> None:
    cur = scrape(10.0, inflight=3, requests=50)
    assert pod_load("inflight", None, cur) == 3
    assert pod_load("rps", None, cur) is None
    assert pod_load("queue-time", None, cur) is None
    assert pod_load("rps", scrape(10.0, requests=1), cur) is None  # no time passed


def test_rps_and_queue_time_between_two_scrapes() -> None:
    prev, cur = scrape(100.0, requests=40, qsum=1.0, qcount=10), scrape(110.0, requests=70, qsum=4.0, qcount=16)
    assert pod_load("rps", prev, cur) == pytest.approx(3.0)
    assert pod_load("queue-time", prev, cur) == pytest.approx(500.0)  # milliseconds
    assert pod_load("queue-time", prev, scrape(110.0, qsum=1.0, qcount=10)) == 0.0  # nothing queued


def test_inflight_between_two_scrapes_is_the_time_average_not_the_last_sample() -> None:
    # 600 requests/s of 5 ms each keep 3 requests in the server on average, though the gauge
    # happened to read 0 at the scrape (a fast server finishes its requests between samples).
    prev, cur = scrape(100.0, busy=12.0), scrape(110.0, inflight=0, busy=42.0)
    assert pod_load("inflight", prev, cur) == pytest.approx(3.0)
    assert pod_load("inflight", prev, scrape(110.0, inflight=0, busy=12.0)) == 0.0  # idle: nothing accrued
    assert pod_load("inflight", prev, scrape(100.0, inflight=4, busy=12.0)) == 4  # no time passed: the gauge


def test_rates_after_a_server_restart_count_from_zero() -> None:
    prev, cur = scrape(100.0, requests=1000, qsum=50.0, qcount=500), scrape(105.0, requests=20, qsum=2.0, qcount=4)
    assert pod_load("rps", prev, cur) == pytest.approx(4.0)
    assert pod_load("queue-time", prev, cur) == pytest.approx(500.0)
    assert pod_load("inflight", scrape(100.0, busy=900.0), scrape(105.0, busy=10.0)) == pytest.approx(2.0)


def test_parse_totals_reads_the_real_servers_exposition() -> None:
    serve_metrics = pytest.importorskip("trtop.serve.metrics")
    m = serve_metrics.ServerMetrics("resnet50")
    m.request_started()
    m.request_started()
    m.request_finished("success", 0.02)
    m.dequeued(0.004)
    body, _ = m.render()
    t = parse_totals(body.decode())
    assert (t.inflight, t.requests, t.queue_count) == (1.0, 1.0, 1.0)
    assert t.queue_seconds_sum == pytest.approx(0.004)
    assert t.request_seconds == pytest.approx(0.02)
