"""Triton's statistics extension: per-model request/batch counters and their wire forms.

``ModelStatistics`` accumulates what Triton reports per model (``inference_count``,
``execution_count``, ``last_inference`` and count + total nanoseconds of success, fail,
queue, compute_input, compute_infer, compute_output, plus per-batch-size compute), which
``perf_analyzer`` and Model Analyzer read to split latency into queue and compute.
The data plane records each finished request (``record_success`` with its queue and
compute durations, or ``record_failure``) and each executed batch (``record_batch``).

``snapshot()`` freezes the counters into a ``StatsSnapshot``: plain integers that add up
(``a + b``, ``merge``), so front-end processes that each count their own requests can be
summed, and that travel as a dict (``to_dict`` / ``from_dict``). ``statistics_json`` is
the v2 HTTP body of ``GET /v2/models[/{name}[/versions/{v}]]/stats``; the gRPC encoder
lives with the generated messages in ``serve.grpc``. Single-threaded: call from the event loop.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# The durations Triton reports per request, in the order of its InferStatistics message.
REQUEST_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Duration:
    """How many times something happened and the nanoseconds it took in total."""

    count: int = 0
    ns: int = 0

    def __add__(self, other: Duration) -> Duration:
        return Duration(self.count + other.count, self.ns + other.ns)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(frozen=True)
class BatchStats:
    """Executions of one batch size (rows) and their compute durations."""

    batch_size: int
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()

    def __add__(self, other: BatchStats) -> BatchStats:
        assert self.batch_size == other.batch_size
        return BatchStats(self.batch_size, self.compute_input + other.compute_input,
                          self.compute_infer + other.compute_infer, self.compute_output + other.compute_output)


@dataclass(frozen=True)
class StatsSnapshot:
    """One model's counters at one moment; ``+`` sums two processes' counts."""

    inference_count: int = 0  # rows of successful requests (a batch of 4 counts 4)
    execution_count: int = 0  # batches the backend ran
    last_inference_ms: int = 0  # wall clock (ms since the epoch) of the last successful request; 0: none yet
    success: Duration = Duration()  # whole request, received to answered
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()
    batches: tuple[BatchStats, ...] = ()  # by batch size, ascending

    def __add__(self, other: StatsSnapshot) -> StatsSnapshot:
        sizes: dict[int, BatchStats] = {b.batch_size: b for b in self.batches}
        for b in other.batches:
            sizes[b.batch_size] = sizes[b.batch_size] + b if b.batch_size in sizes else b
        durations = {name: getattr(self, name) + getattr(other, name) for name in REQUEST_DURATIONS}
        return StatsSnapshot(
            inference_count=self.inference_count + other.inference_count,
            execution_count=self.execution_count + other.execution_count,
            last_inference_ms=max(self.last_inference_ms, other.last_inference_ms),
            batches=tuple(sizes[k] for k in sorted(sizes)), **durations,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain ints and lists (JSON / msgpack), for handing a front-end's counts to another process."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("count")}
        out["last_inference_ms"] = self.last_inference_ms
        out.update({name: getattr(self, name).to_dict() for name in REQUEST_DURATIONS})
        out["batches"] = [{"batch_size": b.batch_size, **{n: getattr(b, n).to_dict() for n in BATCH_DURATIONS}}
                          for b in self.batches]
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StatsSnapshot:
        def duration(d: Mapping[str, Any]) -> Duration:
            return Duration(int(d["count"]), int(d["ns"]))

        return cls(
            inference_count=int(doc["inference_count"]), execution_count=int(doc["execution_count"]),
            last_inference_ms=int(doc["last_inference_ms"]),
            batches=tuple(BatchStats(int(b["batch_size"]), *(duration(b[n]) for n in BATCH_DURATIONS))
                          for b in doc["batches"]),
            **{name: duration(doc[name]) for name in REQUEST_DURATIONS},
        )


def merge(snapshots: Iterable[StatsSnapshot]) -> StatsSnapshot:
    """The sum of several processes' snapshots of one model."""
    total = StatsSnapshot()
    for s in snapshots:
        total = total + s
    return total


@dataclass
class _Counter:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """``count`` requests of ``ns`` each."""
        self.count += count
        self.ns += ns * count

    def frozen(self) -> Duration:
        return Duration(self.count, self.ns)


@dataclass
class _BatchCounter:
    compute_input: _Counter = field(default_factory=_Counter)
    compute_infer: _Counter = field(default_factory=_Counter)
    compute_output: _Counter = field(default_factory=_Counter)


class ModelStatistics:
    """The accumulator one process keeps per model; cheap enough for every request."""

    def __init__(self, wall_clock_ms: Callable[[], int] | None = None) -> None:
        self._now_ms = wall_clock_ms or _epoch_ms
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self._durations = {name: _Counter() for name in REQUEST_DURATIONS}
        self._batches: dict[int, _BatchCounter] = {}

    def record_success(self, *, rows: int, total_ns: int, queue_ns: int, compute_infer_ns: int,
                       compute_input_ns: int = 0, compute_output_ns: int = 0, requests: int = 1) -> None:
        """A request answered with outputs: its rows, whole duration and the parts of it (``requests``:
        client requests a front-end grouped into this one, which share its rows and durations)."""
        d = self._durations
        self.inference_count += rows
        self.last_inference_ms = self._now_ms()
        d["success"].add(total_ns, requests)
        d["queue"].add(queue_ns, requests)
        d["compute_input"].add(compute_input_ns, requests)
        d["compute_infer"].add(compute_infer_ns, requests)
        d["compute_output"].add(compute_output_ns, requests)

    def record_failure(self, total_ns: int, requests: int = 1) -> None:
        """A request that reached the model but got an error (refused, timed out, failed)."""
        self._durations["fail"].add(total_ns, requests)

    def record_batch(self, rows: int, compute_infer_ns: int, compute_input_ns: int = 0,
                     compute_output_ns: int = 0) -> None:
        """One execution of the backend on a merged batch of ``rows`` rows."""
        self.execution_count += 1
        b = self._batches.get(rows)
        if b is None:
            b = self._batches[rows] = _BatchCounter()
        b.compute_input.add(compute_input_ns)
        b.compute_infer.add(compute_infer_ns)
        b.compute_output.add(compute_output_ns)

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            inference_count=self.inference_count, execution_count=self.execution_count,
            last_inference_ms=self.last_inference_ms,
            batches=tuple(BatchStats(rows, b.compute_input.frozen(), b.compute_infer.frozen(),
                                     b.compute_output.frozen()) for rows, b in sorted(self._batches.items())),
            **{name: c.frozen() for name, c in self._durations.items()},
        )


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def model_stats_json(name: str, version: str, s: StatsSnapshot) -> dict[str, Any]:
    """One entry of ``model_stats`` as Triton's HTTP API writes it (field names as in the proto)."""
    return {
        "name": name, "version": version, "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {
            **{n: getattr(s, n).to_dict() for n in REQUEST_DURATIONS},
            "cache_hit": Duration().to_dict(), "cache_miss": Duration().to_dict(),
        },
        "response_stats": {},
        "batch_stats": [{"batch_size": b.batch_size, **{n: getattr(b, n).to_dict() for n in BATCH_DURATIONS}}
                        for b in s.batches],
        "memory_usage": [],
    }


def statistics_json(models: Iterable[tuple[str, str, StatsSnapshot]]) -> dict[str, Any]:
    """The body of ``GET /v2/models/stats`` (and of one model's, with one entry)."""
    return {"model_stats": [model_stats_json(name, version, s) for name, version, s in models]}
