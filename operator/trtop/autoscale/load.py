"""Reads the serving pods' load for the autoscaler: each pod's /metrics, or a Prometheus.

The operator's autoscale timer builds ``PodEndpoint``s from the Deployment's pods
(``endpoint_from_pod``), calls ``source.read(pods, metric)`` on a ``LoadSource`` made by
``open_load_source(settings.prometheus_url)``, and passes ``reading.samples`` into an
``Observation``. Sample times are ``time.time()`` seconds (Prometheus' clock for the
Prometheus source): give ``Observation.at`` the same clock. Nothing here raises on a pod or
Prometheus being unreachable: the pod's value is None (``decide`` treats it as missing) and
``reading.errors`` says what went wrong, for an Event or a log line.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from trtop import names
from trtop.api.spec import ScalingMetric
from trtop.autoscale.decision import PodSample, clamp_metric
from trtop.autoscale.rates import MetricsFormatError, Scrape, parse_totals, pod_load


# A serving pod's /metrics is a few KiB; a tenant's process could send anything.
MAX_METRICS_BYTES = 1 << 20
MAX_PROMETHEUS_BYTES = 16 << 20


@dataclass(frozen=True)
class PodEndpoint:
    name: str
    namespace: str
    ready: bool
    metrics_url: str | None  # e.g. http://10.1.2.3:8000/metrics; None while the pod has no IP


@dataclass(frozen=True)
class LoadReading:
    samples: tuple[PodSample, ...]
    errors: tuple[str, ...] = ()


class LoadSource(Protocol):
    async def read(self, pods: Sequence[PodEndpoint], metric: ScalingMetric) -> LoadReading: ...


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None once it grows past ``limit`` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 << 10):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def endpoint_from_pod(pod: Mapping[str, Any], port: int, path: str = "/metrics") -> PodEndpoint | None:
    """PodEndpoint for a pod object (dict); None for pods the HPA ignores (deleted or failed)."""
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    if meta.get("deletionTimestamp") or status.get("phase") in ("Failed", "Succeeded"):
        return None
    ready = status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    ip = status.get("podIP")
    url = f"http://{_host(ip)}:{port}{path}" if ip else None
    return PodEndpoint(meta.get("name", ""), meta.get("namespace", "default"), ready, url)


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def open_load_source(prometheus_url: str = "", **options: Any) -> LoadSource:
    """A PrometheusReader when a URL is configured, else a DirectScraper (keep one per operator:
    the scraper remembers each pod's previous counters to compute rates)."""
    if prometheus_url:
        return PrometheusReader(prometheus_url, **options)
    return DirectScraper(**options)


class DirectScraper:
    """GETs each ready pod's /metrics; rates come from this scrape and the pod's previous one."""

    def __init__(self, *, timeout_seconds: float = 2.0, clock: Callable[[], float] = time.time,
                 max_rate_interval_seconds: float = 300.0, session: aiohttp.ClientSession | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._clock = clock
        # A previous scrape older than this is not used for a rate (it would smear an old burst).
        self._max_interval = max_rate_interval_seconds
        self._session = session
        self._previous: dict[tuple[str, str, str], Scrape] = {}

    async def read(self, pods: Sequence[PodEndpoint], metric: ScalingMetric) -> LoadReading:
        if self._session is not None:
            results = await self._scrape_all(self._session, pods, metric)
        else:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                results = await self._scrape_all(session, pods, metric)
        now = self._clock()
        self._previous = {k: s for k, s in self._previous.items() if now - s.at <= self._max_interval}
        return LoadReading(tuple(s for s, _ in results), tuple(e for _, e in results if e))

    async def _scrape_all(self, session: aiohttp.ClientSession, pods: Sequence[PodEndpoint],
                          metric: ScalingMetric) -> list[tuple[PodSample, str]]:
        return list(await asyncio.gather(*(self._scrape(session, p, metric) for p in pods)))

    async def _scrape(self, session: aiohttp.ClientSession, pod: PodEndpoint,
                      metric: ScalingMetric) -> tuple[PodSample, str]:
        if not pod.ready:
            return PodSample(pod.name, False, None), ""
        if pod.metrics_url is None:
            return PodSample(pod.name, True, None), f"pod {pod.namespace}/{pod.name} is ready but has no IP yet"
        try:
            # No redirects: a pod must not point the operator at another address and have its
            # answer (another pod's load, an internal service's body) taken as its own.
            async with session.get(pod.metrics_url, timeout=self._timeout, allow_redirects=False) as resp:
                raw = await read_bounded(resp, MAX_METRICS_BYTES)
                if raw is None:
                    raise MetricsFormatError(f"/metrics is larger than {MAX_METRICS_BYTES} bytes")
                body = raw.decode("utf-8", errors="replace")
                if resp.status != 200:
                    raise MetricsFormatError(f"HTTP {resp.status}: {body[:200]!r}")
            # Off the event loop: up to MAX_METRICS_BYTES of a tenant's text is most of a second
            # of parsing, and the operator's other handlers share this loop.
            totals = await asyncio.to_thread(parse_totals, body)
        except (aiohttp.ClientError, asyncio.TimeoutError, MetricsFormatError) as e:
            why = (str(e) or type(e).__name__)[:300]  # errors may quote the pod's own text
            return PodSample(pod.name, True, None), f"reading {pod.metrics_url} of pod {pod.namespace}/{pod.name}: {why}"
        # Keyed by address too: counters read at another IP (the pod's sandbox recreated, or the
        # IP reused) are another process's, and their difference is no rate.
        key = (pod.namespace, pod.name, pod.metrics_url)
        current = Scrape(self._clock(), totals)
        previous = self._previous.get(key)
        if previous is not None and current.at - previous.at > self._max_interval:
            previous = None
        self._previous[key] = current
        return PodSample(pod.name, True, _finite(pod_load(metric, previous, current)), current.at), ""


def _finite(value: float | None) -> float | None:
    """A tenant's reading made safe: NaN/inf or negative is no reading / 0, huge is capped."""
    if value is None or math.isnan(value):
        return None
    return clamp_metric(value)


# Pod names are DNS subdomains: [a-z0-9] with '-' and '.'; anything else cannot be a pod.
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def build_queries(metric: ScalingMetric, namespace: str, pod_names: Sequence[str], *, rate_window: str = "1m",
                  namespace_label: str = "namespace", pod_label: str = "pod") -> tuple[str, str]:
    """(value query, scrape-time query) in PromQL, both ``by (pod)``, for these pods."""
    bad = [n for n in [namespace, *pod_names] if not _POD_NAME.match(n)]
    if bad:
        raise ValueError(f"not a Kubernetes object name: {bad[0]!r}")
    regex = "|".join(n.replace(".", "\\\\.") for n in pod_names)
    sel = f'{{{namespace_label}="{namespace}",{pod_label}=~"{regex}"}}'
    by = f"sum by ({pod_label})"
    if metric == "inflight":
        # Time-averaged (Little's law, see trtop.autoscale.rates); the gauge for a pod that has
        # answered nothing yet.
        busy = names.METRIC_REQUEST_SECONDS + "_sum"
        value = (f"({by} (rate({busy}{sel}[{rate_window}])))"
                 f" or ({by} ({names.METRIC_INFLIGHT}{sel}) unless {by} ({busy}{sel}))")
    else:
        if metric == "rps":
            counter = names.METRIC_REQUESTS
            value = f"{by} (rate({counter}{sel}[{rate_window}]))"
        else:
            q, counter = names.METRIC_QUEUE_SECONDS, names.METRIC_QUEUE_SECONDS + "_count"
            # Milliseconds, the unit of spec.scaling.target for queue-time.
            value = (f"1000 * {by} (rate({q}_sum{sel}[{rate_window}]))"
                     f" / {by} (rate({q}_count{sel}[{rate_window}]))")
        # A server that has served nothing has no counter series yet: its load is 0, not unknown.
        value = f"({value}) or ({by} (0 * {names.METRIC_INFLIGHT}{sel}) unless {by} ({counter}{sel}))"
    scraped_at = f"max by ({pod_label}) (timestamp({names.METRIC_INFLIGHT}{sel}))"
    return value, scraped_at


class PrometheusError(RuntimeError):
    """The Prometheus HTTP API answered with an error or could not be reached."""


class PrometheusReader:
    """Per-pod load from a Prometheus that scrapes the serving pods (``/api/v1/query``)."""

    def __init__(self, url: str, *, rate_window: str = "1m", namespace_label: str = "namespace",
                 pod_label: str = "pod", timeout_seconds: float = 5.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._url = url.rstrip("/") + "/api/v1/query"
        self._rate_window = rate_window
        self._namespace_label, self._pod_label = namespace_label, pod_label
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session = session

    async def read(self, pods: Sequence[PodEndpoint], metric: ScalingMetric) -> LoadReading:
        ready = [p for p in pods if p.ready]
        by_ns: dict[str, list[str]] = {}
        for p in ready:
            by_ns.setdefault(p.namespace, []).append(p.name)
        values: dict[str, tuple[float, float]] = {}
        errors: list[str] = []
        for namespace, pod_names in by_ns.items():
            value_q, time_q = build_queries(metric, namespace, pod_names, rate_window=self._rate_window,
                                            namespace_label=self._namespace_label, pod_label=self._pod_label)
            try:
                found, scraped = await asyncio.gather(self._vector(value_q, self._pod_label),
                                                      self._vector(time_q, self._pod_label))
            except PrometheusError as e:
                errors.append(str(e))
                continue
            for pod, (v, evaluated_at) in found.items():
                if math.isnan(v) and metric == "queue-time":
                    v = 0.0  # 0/0: no request queued in the window, so none waited
                values[pod] = (v, scraped.get(pod, (evaluated_at, evaluated_at))[0])
        samples = tuple(
            PodSample(p.name, p.ready, _finite(values[p.name][0]), values[p.name][1]) if p.ready and p.name in values
            else PodSample(p.name, p.ready, None) for p in pods)
        return LoadReading(samples, tuple(errors))

    async def query_scalar(self, promql: str) -> float | None:
        """Sum of a query's result vector (e.g. queued requests at a gateway, for
        ``Observation.pending_load``); None when it has no result."""
        found = await self._vector(promql, None)
        return sum(v for v, _ in found.values()) if found else None

    async def _vector(self, promql: str, label: str | None) -> dict[str, tuple[float, float]]:
        """``label``'s value (or the result's index) -> (value, evaluation time) of an instant query."""
        try:
            if self._session is not None:
                payload = await self._get(self._session, promql)
            else:
                async with aiohttp.ClientSession(timeout=self._timeout) as session:
                    payload = await self._get(session, promql)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise PrometheusError(f"querying Prometheus at {self._url}: {str(e) or type(e).__name__}") from e
        if payload.get("status") != "success":
            raise PrometheusError(f"Prometheus rejected {promql!r}: {payload.get('errorType')}: {payload.get('error')}")
        data = payload.get("data", {})
        if data.get("resultType") != "vector":
            raise PrometheusError(f"expected an instant vector from {promql!r}, got {data.get('resultType')}")
        out: dict[str, tuple[float, float]] = {}
        try:
            for i, item in enumerate(data.get("result", [])):
                at, raw = item["value"]
                name = item.get("metric", {}).get(label, "") if label else str(i)
                out[str(name)] = (float(raw), float(at))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise PrometheusError(f"unexpected answer from Prometheus to {promql!r}: {e}") from e
        return out

    async def _get(self, session: aiohttp.ClientSession, promql: str) -> dict[str, Any]:
        async with session.get(self._url, params={"query": promql}, timeout=self._timeout) as resp:
            if resp.status >= 500:
                raise PrometheusError(f"Prometheus at {self._url} answered HTTP {resp.status}")
            raw = await read_bounded(resp, MAX_PROMETHEUS_BYTES)
            if raw is None:
                raise ValueError(f"answer larger than {MAX_PROMETHEUS_BYTES} bytes")
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("answer is not a JSON object")
            return payload
