"""The service's start-up rules: max batch, warm-up, readiness states."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from trtop import names
from trtop.api.engine import TensorSpec
from trtop.serve.errors import NotReady
from trtop.serve.metrics import ServerMetrics
from trtop.serve.model import ModelInfo
from trtop.serve.protocol import InferRequest
from trtop.serve.service import BatchingConfig, InferenceService, Loaded, effective_max_batch, warmup_feeds
from trtop.serve.types import Feeds, Outputs

from .conftest import Recorder, affine_record, metric_value


@pytest.mark.parametrize("configured,record_max,runtime_max,expected", [
    (0, 16, None, 16),  # the engine's batch.max
    (4, 16, None, 4),  # the setting wins
    (0, None, None, 32),  # a raw model with a dynamic batch
    (0, None, 1, 1),  # a fixed first dimension
    (64, 16, 32, 32),  # never above what the model accepts
])
def test_effective_max_batch(configured: int, record_max: int | None, runtime_max: int | None, expected: int) -> None:
    record = affine_record(max_batch=record_max) if record_max else None
    assert effective_max_batch(configured, record, runtime_max) == expected


def test_warmup_feeds_cover_dynamic_dims() -> None:
    info = ModelInfo("m", "p", "b", (TensorSpec("x", "int64", (-1, -1, 3)),), (), max_batch=4)
    assert warmup_feeds(info, 4)["x"].shape == (4, 1, 3)


async def test_warms_up_before_ready_and_serves_while_draining() -> None:
    rt = Recorder()
    svc = InferenceService("m", lambda: Loaded(rt, backend="fake"), BatchingConfig(max_batch=6), ServerMetrics("m"))
    req = InferRequest(None, {"x": np.zeros((1, 2), np.float32)}, None, False, None)
    with pytest.raises(NotReady, match="loading"):
        await svc.infer(req)
    await svc.start()
    assert svc.ready and rt.prepared == rt.rows[:4] == [1, 2, 4, 6]  # every bucket prepared and warmed before ready
    assert rt.rows[4:] == [1, 1, 1] and svc.lone_run_s is not None  # then a lone run timed (the best of three)
    assert svc.info is not None and svc.info.buckets == (1, 2, 4, 6)
    svc.begin_drain()
    assert not svc.ready
    _, out = await svc.infer(req)
    np.testing.assert_array_equal(out["y"], np.ones((1, 2), np.float32))
    await svc.close()
    assert svc.state == "stopped"


async def test_buckets_come_from_the_setting_or_the_engine_record() -> None:
    from trtop.serve.service import choose_buckets
    from tests.serve.conftest import affine_record
    from dataclasses import replace

    record = replace(affine_record(max_batch=16), buckets=(1, 8, 16))
    assert choose_buckets(None, record, 16) == (1, 8, 16)
    assert choose_buckets(None, None, 16) == (1, 2, 4, 8, 16)
    assert choose_buckets((4, 12), record, 16) == (4, 12, 16)
    assert choose_buckets((), record, 3) == (1, 2, 3)  # "all": every size, nothing padded


async def test_request_memory_is_pinned_by_the_runtime_whether_it_comes_before_or_after_loading() -> None:
    """Front-end arenas are made while the model loads and when a front-end is replaced: every one is
    handed to the runtime to page-lock, once it exists, and after it was prepared."""
    class Pinning(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.pinned: list[tuple[int, int, bool]] = []

        def pin_host(self, address: int, nbytes: int) -> bool:
            self.pinned.append((address, nbytes, bool(self.prepared)))
            return True

    rt = Pinning()
    svc = InferenceService("m", lambda: Loaded(rt, backend="fake"), BatchingConfig(max_batch=2), ServerMetrics("m"))
    svc.add_host_memory(0x1000, 4096)
    assert rt.pinned == []
    await svc.start()
    svc.add_host_memory(0x9000, 8192)
    assert rt.pinned == [(0x1000, 4096, True), (0x9000, 8192, True)]
    await svc.close()


async def test_a_runtime_that_cannot_pin_memory_is_left_alone() -> None:
    svc = InferenceService("m", lambda: Loaded(Recorder(), backend="fake"), BatchingConfig(max_batch=2),
                           ServerMetrics("m"))
    svc.add_host_memory(0x1000, 4096)
    await svc.start()
    svc.add_host_memory(0x2000, 4096)
    assert svc.ready
    await svc.close()


async def test_merged_batches_stop_where_the_runtime_measures_that_batching_stops_paying() -> None:
    """A runtime that reports rows per second per bucket (CPU ONNX Runtime) caps merged batches at
    the last size that pays, and is not measured past two sizes that do not."""
    class Measured(Recorder):
        rates = {1: 200.0, 2: 198.0, 4: 120.0, 8: 60.0, 16: 30.0, 32: 10.0}

        def __init__(self) -> None:
            super().__init__()
            self.measured: list[tuple[int, int]] = []

        def throughput(self, size: int, instances: int, apart: bool = False, **_: float) -> float:
            if apart:  # size runs of one row: batch 1's rate
                return self.rates[1]
            self.measured.append((size, instances))
            return self.rates[size]

    rt = Measured()
    svc = InferenceService("m", lambda: Loaded(rt, backend="fake"), BatchingConfig(max_batch=32, instances=2),
                           ServerMetrics("m"))
    await svc.start()
    assert svc.merge_max == 2 and svc.info is not None and svc.info.max_batch == 32  # requests may still carry 32
    assert svc.rows_apart  # a batch of 2 is not clearly faster than two batch-1 runs
    # One pass up to two sizes that do not pay, the same sizes once more, then the cap in turns against its rows apart.
    assert [s for s, _ in rt.measured] == [1, 2, 4, 8, 1, 2, 4, 8, 2, 2, 2] and {i for _, i in rt.measured} == {2}
    await svc.close()


async def test_a_disturbed_measurement_does_not_decide_the_merge_cap() -> None:
    """The first pass sees batch 2 and 4 slowed (another process ran); the second pass does not:
    each size keeps its better figure, so the cap is where batching really stops paying."""
    class Disturbed(Recorder):
        first = {1: 200.0, 2: 120.0, 4: 110.0, 8: 60.0, 16: 30.0, 32: 10.0}
        again = {1: 200.0, 2: 230.0, 4: 240.0, 8: 60.0, 16: 30.0, 32: 10.0}

        def __init__(self) -> None:
            super().__init__()
            self.calls: dict[int, int] = {}

        def throughput(self, size: int, instances: int, apart: bool = False, **_: float) -> float:
            self.calls[size] = self.calls.get(size, 0) + 1
            return (self.first if self.calls[size] == 1 else self.again)[size]

    rt = Disturbed()
    svc = InferenceService("m", lambda: Loaded(rt, backend="fake"), BatchingConfig(max_batch=32, instances=2),
                           ServerMetrics("m"))
    await svc.start()
    assert svc.merge_max == 4  # one pass alone would have capped merged batches at 1
    await svc.close()


async def test_a_batch_runs_its_rows_apart_unless_merging_is_measured_clearly_faster() -> None:
    """Two 1-thread runs of MobileNetV2 on the development machine: the merged batch at the cap is not clearly
    faster than its rows run one at a time (measured in turns; a slow spell in one turn decides nothing). The
    cap stays at the floor (one decision and one hop for four requests) and the scheduler runs the rows apart;
    where merging is clearly faster (270 against at best 260) it merges."""
    class Measured(Recorder):
        rates = {1: 320.0, 2: 290.0, 4: 270.0, 8: 250.0, 16: 240.0, 32: 200.0}
        apart = [250.0, 319.0, 300.0]  # a slow spell in the first turn

        def throughput(self, size: int, instances: int, apart: bool = False, **_: float) -> float:
            return self.apart.pop(0) if apart else self.rates[size]

    for apart, expected in (([250.0, 319.0, 300.0], True), ([250.0, 255.0, 260.0], False)):
        Measured.apart = apart
        svc = InferenceService("m", lambda: Loaded(Measured(), backend="fake"),
                               BatchingConfig(max_batch=32, instances=2), ServerMetrics("m"))
        await svc.start()
        assert svc.merge_max == 4 and svc.rows_apart is expected
        assert svc.scheduler is not None and svc.scheduler.rows_judge is svc.rows_judge
        assert svc.rows_judge is not None and svc.rows_judge.size == 4 and svc.rows_judge.apart is expected
        assert metric_value(svc.metrics.render()[0].decode(), names.METRIC_ROWS_APART, model="m") == expected
        svc.rows_judge.apart = not expected  # served batches changed the way: the next scrape says so
        assert metric_value(svc.metrics.render()[0].decode(), names.METRIC_ROWS_APART, model="m") == (not expected)
        await svc.close()


def test_cpu_onnxruntime_measures_rows_per_second_per_batch_size(tmp_path) -> None:
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
    from trtop.serve.runtime import RuntimeOptions
    from tests.serve.conftest import make_affine_onnx

    rt = OnnxRuntime(make_affine_onnx(tmp_path / "m.onnx"), RuntimeOptions(threads=1, use_gpu=False))
    rates = {size: rt.throughput(size, instances=2) for size in (1, 8)}
    assert all(r is not None and r > 0 for r in rates.values())
    assert (rt.throughput(8, instances=2, apart=True) or 0) > 0  # eight runs of one row per turn
    # Each thread runs for at least min_seconds: the figure is rows over the time they took.
    start = time.perf_counter()
    assert (rt.throughput(1, instances=2, min_seconds=0.2) or 0) > 0
    assert time.perf_counter() - start >= 0.2


async def test_on_cpu_the_cores_are_kept_awake_only_for_a_model_whose_lone_run_is_short() -> None:
    """Under ``--keep-awake auto`` on CPU the spinners start only when a batch-1 run, timed at load, is under
    the threshold; without one (``on``, a GPU) they start whatever the run takes."""
    from trtop.serve.awake import KeepAwake

    class Awake(KeepAwake):  # the decision only: no spinner processes
        started = False

        async def start(self, busy: Callable[[], bool] | None = None) -> None:
            self.started = True

        def close(self) -> None:
            pass

    class Slow(Recorder):
        def __init__(self, delay_s: float) -> None:
            super().__init__()
            self.delay_s = delay_s

        def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
            time.sleep(self.delay_s)
            return super().run(feeds, outputs)

    for delay_s, under_s, kept in ((0.0, 0.02, True), (0.03, 0.02, False), (0.03, None, True)):
        awake = Awake((0,), lone_run_max_s=under_s)
        rt = Slow(delay_s)
        svc = InferenceService("m", lambda: Loaded(rt, backend="fake"), BatchingConfig(max_batch=2),
                               ServerMetrics("m"), awake)
        await svc.start()
        assert svc.lone_run_s is not None and (svc.lone_run_s >= 0.03) == (delay_s > 0)
        assert awake.started is kept, (delay_s, under_s)
        await svc.close()


async def test_each_request_tells_the_spinners_how_many_rows_wait_in_the_queue() -> None:
    """``KeepAwake.touch`` hears the rows queued, the new request's own included: requests read in one turn of
    the loop wait together until the batch starts, then the next one finds the queue empty again."""
    from trtop.serve.awake import KeepAwake

    class Awake(KeepAwake):  # what it is told only: no spinner processes
        def __init__(self) -> None:
            super().__init__((0,))
            self.heard: list[int] = []

        async def start(self, busy: Callable[[], bool] | None = None) -> None:
            pass

        def touch(self, waiting_rows: int = 0) -> None:
            self.heard.append(waiting_rows)

        def close(self) -> None:
            pass

    awake = Awake()
    svc = InferenceService("m", lambda: Loaded(Recorder(), backend="fake"), BatchingConfig(max_batch=8),
                           ServerMetrics("m"), awake)
    await svc.start()
    feeds = {"x": np.zeros((1, 2), np.float32)}
    three = [svc.enqueue(feeds, 1, ("x",), 5.0) for _ in range(2)] + [
        svc.enqueue({"x": np.zeros((3, 2), np.float32)}, 3, ("x",), 5.0)]
    await asyncio.gather(*three)
    await svc.enqueue(feeds, 1, ("x",), 5.0)
    assert awake.heard == [1, 2, 5, 1]
    await svc.close()


async def test_a_runtime_that_hands_off_gets_a_scheduler_that_starts_batches_where_they_land_and_a_short_switch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--slot-handoff`` on a GPU with bound sessions: the scheduler starts the next batch where one lands and a
    thread waiting for the GIL asks for it after ``HANDOFF_SWITCH_S``; a runtime that does not hand off changes
    neither."""
    import sys

    from trtop.serve.runtime import HANDOFF_SWITCH_S

    class HandsOff(Recorder):
        hands_off = True

    switched: list[float] = []
    monkeypatch.setattr(sys, "setswitchinterval", switched.append)
    svc = InferenceService("m", lambda: Loaded(HandsOff(), backend="fake"), BatchingConfig(max_batch=2),
                           ServerMetrics("m"))
    await svc.start()
    assert switched == [HANDOFF_SWITCH_S] and svc._scheduler is not None and svc._scheduler._land_starts
    await svc.close()
    plain = InferenceService("m", lambda: Loaded(Recorder(), backend="fake"), BatchingConfig(max_batch=2),
                             ServerMetrics("m"))
    await plain.start()
    assert switched == [HANDOFF_SWITCH_S] and plain._scheduler is not None and not plain._scheduler._land_starts
    await plain.close()
