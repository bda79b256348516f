"""Latency and throughput of a built artifact at a batch size: a few timed runs, p50/p99 and samples per second.

Kept short (a time budget per batch size) because it runs inside every build Job and in
CI on CPU; numbers are indicative, not a load test. Called by ``pipeline.py``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Runner = Callable[[Mapping[str, np.ndarray]], object]


@dataclass(frozen=True)
class Timing:
    batch: int
    iterations: int
    p50_ms: float
    p99_ms: float
    throughput: float  # samples (batch items) per second at p50

    def as_record(self) -> dict[str, float]:
        return {"batch": float(self.batch), "iterations": float(self.iterations), "p50_ms": round(self.p50_ms, 4),
                "p99_ms": round(self.p99_ms, 4), "throughput": round(self.throughput, 2)}


def measure(run: Runner, feeds: Mapping[str, np.ndarray], *, warmup: int = 2, budget_s: float = 1.0,
            min_iterations: int = 5, max_iterations: int = 200,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
    for _ in range(warmup):
        run(feeds)
    samples: list[float] = []
    deadline = clock() + budget_s
    while len(samples) < max_iterations and (len(samples) < min_iterations or clock() < deadline):
        start = clock()
        run(feeds)
        samples.append(clock() - start)
    p50, p99 = (float(v) * 1000 for v in np.percentile(samples, [50, 99]))
    return Timing(batch, len(samples), p50, p99, batch / (p50 / 1000) if p50 > 0 else 0.0)
