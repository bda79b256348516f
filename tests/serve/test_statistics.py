"""The statistics accumulator: what it counts, that snapshots add up across processes, and its wire forms."""
from __future__ import annotations

import json

from trtop.serve.grpc.wire import statistics_response
from trtop.serve.statistics import BatchStats, Duration, ModelStatistics, StatsSnapshot, merge, statistics_json


def recorded(clock_ms: int, requests: list[tuple[int, int, int]], batches: list[tuple[int, int]],
             failures: int = 0) -> StatsSnapshot:
    """requests: (rows, queue ns, compute ns); the whole request takes queue + compute + 10 ns."""
    stats = ModelStatistics(wall_clock_ms=lambda: clock_ms)
    for rows, queue, compute in requests:
        stats.record_success(rows=rows, total_ns=queue + compute + 10, queue_ns=queue, compute_infer_ns=compute)
    for rows, compute in batches:
        stats.record_batch(rows, compute)
    for _ in range(failures):
        stats.record_failure(7)
    return stats.snapshot()


def test_counts_requests_rows_batches_and_durations() -> None:
    s = recorded(1000, [(1, 100, 50), (3, 200, 50)], [(4, 50)], failures=2)
    assert (s.inference_count, s.execution_count, s.last_inference_ms) == (4, 1, 1000)
    assert s.success == Duration(2, 420) and s.fail == Duration(2, 14)
    assert s.queue == Duration(2, 300) and s.compute_infer == Duration(2, 100)
    assert s.compute_input == Duration(2, 0) == s.compute_output  # counted per request like Triton, no time yet
    assert s.batches == (BatchStats(4, Duration(1, 0), Duration(1, 50), Duration(1, 0)),)


def test_nothing_recorded_is_all_zero_and_failures_leave_last_inference_alone() -> None:
    assert ModelStatistics().snapshot() == StatsSnapshot()
    assert recorded(5, [], [], failures=1).last_inference_ms == 0


def test_snapshots_of_several_processes_add_up() -> None:
    a = recorded(1000, [(1, 100, 50)], [(1, 50), (2, 60)])
    b = recorded(3000, [(2, 10, 60)], [(2, 60), (8, 90)], failures=1)
    total = merge([a, b])
    assert total == a + b == b + a
    assert (total.inference_count, total.execution_count, total.last_inference_ms) == (3, 4, 3000)
    assert total.success == Duration(2, 240) and total.fail == Duration(1, 7)
    assert [(x.batch_size, x.compute_infer) for x in total.batches] == [
        (1, Duration(1, 50)), (2, Duration(2, 120)), (8, Duration(1, 90))]
    assert merge([]) == StatsSnapshot()


def test_a_snapshot_travels_as_plain_json() -> None:
    s = recorded(1000, [(1, 100, 50)], [(1, 50)], failures=1)
    assert StatsSnapshot.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_http_json_and_grpc_message_carry_tritons_fields() -> None:
    s = recorded(1234, [(2, 100, 50)], [(2, 50)])
    model = statistics_json([("m", "1", s)])["model_stats"][0]
    assert (model["name"], model["version"], model["last_inference"]) == ("m", "1", 1234)
    assert (model["inference_count"], model["execution_count"]) == (2, 1)
    assert set(model["inference_stats"]) == {"success", "fail", "queue", "compute_input", "compute_infer",
                                             "compute_output", "cache_hit", "cache_miss"}
    assert model["inference_stats"]["queue"] == {"count": 1, "ns": 100}
    assert model["batch_stats"] == [{"batch_size": 2, "compute_input": {"count": 1, "ns": 0},
                                     "compute_infer": {"count": 1, "ns": 50}, "compute_output": {"count": 1, "ns": 0}}]
    message = statistics_response([("m", "1", s)]).model_stats[0]
    assert (message.name, message.last_inference, message.inference_count) == ("m", 1234, 2)
    assert (message.inference_stats.success.count, message.inference_stats.success.ns) == (1, 160)
    assert message.batch_stats[0].compute_infer.ns == 50
