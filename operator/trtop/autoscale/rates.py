"""Per-pod load from a serving pod's /metrics text: totals from one scrape, rates from two.

Pure: ``parse_totals`` reads the Prometheus text format (prometheus_client's parser) into the
few numbers the autoscaler needs; ``pod_load`` turns the previous and the current scrape of one
pod into its in-flight requests, requests per second, or mean queue time in milliseconds
(the unit of ``spec.scaling.target`` for queue-time; the server's histogram is in seconds). Called by
``trtop.autoscale.load.DirectScraper``.

In-flight is time-averaged between two scrapes (Little's law: the mean number of requests in
the server is the rate at which request-seconds accrue, the increase of the request-duration
histogram's sum over the interval). The instantaneous gauge is used only for a pod's first
scrape: a fast server finishes its requests between samples, so at hundreds of requests per
second the gauge reads 0 most of the time and scale-up would wait for a lucky sample.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from trtop import names
from trtop.api.spec import ScalingMetric

_REQUESTS = names.METRIC_REQUESTS  # the counter's sample name ends in _total already
_QUEUE_SUM = names.METRIC_QUEUE_SECONDS + "_sum"
_QUEUE_COUNT = names.METRIC_QUEUE_SECONDS + "_count"
_REQUEST_SECONDS = names.METRIC_REQUEST_SECONDS + "_sum"


# Our servers' lines are a few hundred characters. prometheus_client's parser is quadratic in
# a line's labels (a 0.6 MB line of them: seconds of CPU), so longer lines are refused unread.
MAX_LINE_CHARS = 4096


class MetricsFormatError(ValueError):
    """The /metrics body is not Prometheus text, or lacks the inference server's metrics."""


@dataclass(frozen=True)
class MetricTotals:
    """Sums over every label set (model, outcome) of one pod's server metrics."""

    inflight: float
    requests: float
    queue_seconds_sum: float
    queue_count: float
    request_seconds: float = 0.0  # sum of the durations of the requests answered so far


@dataclass(frozen=True)
class Scrape:
    at: float  # seconds, the caller's clock
    totals: MetricTotals


def parse_totals(text: str) -> MetricTotals:
    """The inference server's load metrics in one /metrics body. Raises MetricsFormatError."""
    found = {names.METRIC_INFLIGHT: 0.0, _REQUESTS: 0.0, _QUEUE_SUM: 0.0, _QUEUE_COUNT: 0.0, _REQUEST_SECONDS: 0.0}
    seen: set[str] = set()
    if any(len(line) > MAX_LINE_CHARS for line in text.split("\n")):
        raise MetricsFormatError(f"a line is longer than {MAX_LINE_CHARS} characters")
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in found:
                    found[sample.name] += float(sample.value)
                    seen.add(sample.name)
    except ValueError as e:  # the parser raises ValueError on malformed lines
        raise MetricsFormatError(f"not Prometheus text format: {e}") from e
    if names.METRIC_INFLIGHT not in seen:
        raise MetricsFormatError(
            f"no {names.METRIC_INFLIGHT} sample: is this a trtop inference server's /metrics?")
    # A server that has served nothing yet may have no labelled counter/histogram children:
    # those totals are then genuinely 0.
    return MetricTotals(found[names.METRIC_INFLIGHT], found[_REQUESTS], found[_QUEUE_SUM], found[_QUEUE_COUNT],
                        found[_REQUEST_SECONDS])


def counter_increase(previous: float, current: float) -> float:
    """Increase of a counter between two samples; a drop means the process restarted and the
    counter began again at 0 (Prometheus' rate() makes the same assumption)."""
    return current - previous if current >= previous else current


def pod_load(metric: ScalingMetric, previous: Scrape | None, current: Scrape) -> float | None:
    """One pod's load in the metric's unit; None when a rate needs a previous scrape."""
    rated = previous is not None and current.at > previous.at
    if metric == "inflight":
        if previous is None or not rated:
            return current.totals.inflight
        busy = counter_increase(previous.totals.request_seconds, current.totals.request_seconds)
        return busy / (current.at - previous.at)
    if previous is None or not rated:
        return None
    if metric == "rps":
        return counter_increase(previous.totals.requests, current.totals.requests) / (current.at - previous.at)
    # queue-time: mean milliseconds waited by the requests that finished queueing in between.
    count = counter_increase(previous.totals.queue_count, current.totals.queue_count)
    if count <= 0:
        return 0.0  # nothing queued, nothing waited
    waited = counter_increase(previous.totals.queue_seconds_sum, current.totals.queue_seconds_sum)
    if current.totals.queue_count < previous.totals.queue_count:
        waited = current.totals.queue_seconds_sum  # restarted: sum and count began again together
    return 1000.0 * waited / count
