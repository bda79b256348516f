"""Prometheus metrics of one served model (names from ``trtop.names``; read by the autoscaler).

Each ``ServerMetrics`` owns its registry, so several servers in one test process do not
clash. The app records requests (outcome, latency, in-flight); the scheduler reports
queue waits and batches through the ``BatchObserver`` methods; the service sets the
model load time.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
    generate_latest,
)

from trtop import names

# Seconds: from a fraction of a millisecond (tiny models, queue waits) to tens of seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)

# Outcomes counted from the start, so rate() queries see a series before the first error.
OUTCOMES = ("success", "bad_request", "not_found", "too_large", "not_ready", "overloaded", "timeout", "error")


class ServerMetrics:
    """The server's collectors, labelled with the model name."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        self._requests = Counter(names.METRIC_REQUESTS, "Inference requests by outcome.",
                                 ["model", "outcome"], registry=reg)
        self._inflight = Gauge(names.METRIC_INFLIGHT, "Inference requests being handled (queued or running).",
                               ["model"], registry=reg)
        self._queue = Histogram(names.METRIC_QUEUE_SECONDS, "Seconds a request waited in the batching queue.",
                                ["model"], buckets=LATENCY_BUCKETS, registry=reg)
        self._compute = Histogram(names.METRIC_COMPUTE_SECONDS, "Seconds the backend spent on one batch.",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=reg)
        self._latency = Histogram(names.METRIC_REQUEST_SECONDS, "Seconds from request received to response ready (successful requests).",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=reg)
        self._batch = Histogram(names.METRIC_BATCH_SIZE, "Rows per batch run by the backend.",
                                ["model"], buckets=BATCH_BUCKETS, registry=reg)
        self._load = Gauge(names.METRIC_MODEL_LOAD_SECONDS, "Seconds to fetch, load and warm up the model.",
                           ["model"], registry=reg)
        self._awake = Gauge(names.METRIC_CORES_AWAKE, "Cores the server keeps from halting right now (--keep-awake: "
                            "busy loops at the lowest priority, counted as the pod's CPU use).", ["model"], registry=reg)
        self._awake.labels(model).set(0)  # present from the start (0 with --keep-awake off)
        self._rows_apart = Gauge(names.METRIC_ROWS_APART, "1 while full batches run their rows one at a time, "
                                 "unmerged (CPU, where merging does not pay: judged at start-up and while serving), "
                                 "else 0.", ["model"], registry=reg)
        self._rows_apart.labels(model).set(0)
        self._outcomes = {outcome: self._requests.labels(model, outcome) for outcome in OUTCOMES}
        self._inflight_child = self._inflight.labels(model)
        self._latency_child = self._latency.labels(model)
        self._queue_child = self._queue.labels(model)
        self._compute_child = self._compute.labels(model)
        self._batch_child = self._batch.labels(model)

    # -- the app -------------------------------------------------------------------------
    def request_started(self) -> None:
        self._inflight_child.inc()

    def request_finished(self, outcome: str, seconds: float) -> None:
        self._inflight_child.dec()
        child = self._outcomes.get(outcome)
        (child if child is not None else self._requests.labels(self.model, outcome)).inc()
        if outcome == "success":
            self._latency_child.observe(seconds)

    def requests_reported(self, started: int, finished: list[tuple[str, float]]) -> None:
        """What a front-end process counted since its last report (the engine process holds the totals)."""
        if started:
            self._inflight_child.inc(started)
        if not finished:
            return
        self._inflight_child.dec(len(finished))
        counts: dict[str, int] = {}
        observe = self._latency_child.observe
        for outcome, seconds in finished:
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "success":
                observe(seconds)
        for outcome, n in counts.items():
            child = self._outcomes.get(outcome)
            (child if child is not None else self._requests.labels(self.model, outcome)).inc(n)

    # -- the scheduler (BatchObserver) ---------------------------------------------------
    def dequeued(self, waited_s: float) -> None:
        self._queue_child.observe(waited_s)

    def batch_done(self, rows: int, compute_s: float) -> None:
        self._batch_child.observe(rows)
        self._compute_child.observe(compute_s)

    # -- the service ---------------------------------------------------------------------
    def model_loaded(self, seconds: float) -> None:
        self._load.labels(self.model).set(seconds)

    def cores_awake(self, cores: int) -> None:
        self._awake.labels(self.model).set(cores)

    def rows_apart_from(self, read: Callable[[], bool]) -> None:
        """The way full batches run, read at each scrape (the scheduler's judge may change it while serving)."""
        self._rows_apart.labels(self.model).set_function(lambda: float(read()))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
