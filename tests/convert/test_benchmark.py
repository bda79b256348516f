"""Latency percentiles and throughput, with a scripted clock."""
from __future__ import annotations

import numpy as np
import pytest

from trtop.convert.benchmark import measure


def test_percentiles_and_throughput_from_timed_runs() -> None:
    durations = iter([0.010] * 98 + [0.050] * 2)  # 100 timed runs: 10 ms, and two slow ones
    now = [0.0]
    runs: list[int] = []

    def clock() -> float:
        return now[0]

    def run(feeds: object) -> None:
        runs.append(1)
        if len(runs) > 2:  # after the warm-up
            now[0] += next(durations)

    timing = measure(run, {"x": np.zeros((8, 3))}, warmup=2, budget_s=0.0, min_iterations=100,
                     max_iterations=100, clock=clock)
    assert len(runs) == 102 and timing.iterations == 100 and timing.batch == 8
    assert timing.p50_ms == pytest.approx(10.0) and 10.0 < timing.p99_ms <= 50.0 + 1e-9
    assert timing.throughput == pytest.approx(800.0)  # 8 samples per 10 ms
    assert set(timing.as_record()) == {"batch", "iterations", "p50_ms", "p99_ms", "throughput"}


def test_stops_at_the_time_budget() -> None:
    now = [0.0]

    def run(feeds: object) -> None:
        now[0] += 0.3

    timing = measure(run, {"x": np.zeros((1, 1))}, warmup=0, budget_s=1.0, min_iterations=2,
                     clock=lambda: now[0])
    assert timing.iterations == 4  # 0.3, 0.6, 0.9 are within the budget, the run started at 0.9 ends it
