"""The service's start-up rules: max batch, warm-up, readiness states."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from trtop.api.engine import TensorSpec
from trtop.serve.errors import NotReady
from trtop.serve.metrics import ServerMetrics
from trtop.serve.model import ModelInfo
from trtop.serve.protocol import InferRequest
from trtop.serve.service import BatchingConfig, InferenceService, Loaded, effective_max_batch, warmup_feeds
from trtop.serve.types import Feeds, Outputs

from .conftest import affine_record


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


class Recorder:
    """A runtime that records the batch sizes it ran."""

    inputs = (TensorSpec("x", "float32", (-1, 2)),)
    outputs = (TensorSpec("y", "float32", (-1, 2)),)
    max_batch = None
    platform = "fake"

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.prepared: list[int] = []

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        self.prepared = list(batch_sizes)

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        self.rows.append(feeds["x"].shape[0])
        return {"y": feeds["x"] + 1}

    def close(self) -> None:
        pass


async def test_warms_up_before_ready_and_serves_while_draining() -> None:
    rt = Recorder()
    svc = InferenceService("m", lambda: Loaded(rt, backend="fake"), BatchingConfig(max_batch=6), ServerMetrics("m"))
    req = InferRequest(None, {"x": np.zeros((1, 2), np.float32)}, None, False, None)
    with pytest.raises(NotReady, match="loading"):
        await svc.infer(req)
    await svc.start()
    assert svc.ready and rt.prepared == rt.rows == [1, 2, 4, 6]  # every bucket prepared and warmed before ready
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
