"""Bound GPU buffers: a batch reaches the device through libcudart on the slot's own stream (the GIL is
released meanwhile), and through ONNX Runtime's own copy where libcudart cannot be used.

ONNX Runtime's CUDA provider cannot run here, so the ORT objects and the CUDA runtime are fakes
that record what was asked of them; the copy path itself runs on the H200 host (bench/serve_gpu.py),
where every bucket is also checked against the plain session before it serves."""
from __future__ import annotations

from typing import Any

import numpy as np

from trtop.serve.backends.onnxruntime_bind import Bound, DeviceCopier


class FakeValue:
    def __init__(self, shape: list[int], dtype: Any, ptr: int) -> None:
        self.array = np.zeros(shape, dtype)
        self.ptr = ptr
        self.updates = 0

    def data_ptr(self) -> int:
        return self.ptr

    def update_inplace(self, array: np.ndarray) -> None:
        self.updates += 1
        self.array[...] = array

    def numpy(self) -> np.ndarray:
        return self.array.copy()


class FakeOrt:
    class OrtValue:
        made = 0

        @classmethod
        def ortvalue_from_shape_and_type(cls, shape: list[int], dtype: Any, device: str, device_id: int) -> FakeValue:
            cls.made += 1
            return FakeValue(shape, dtype, 0x1000 * cls.made)


class FakeSession:
    class Binding:
        def bind_ortvalue_input(self, name: str, value: FakeValue) -> None:
            pass

        def bind_ortvalue_output(self, name: str, value: FakeValue) -> None:
            pass

    def io_binding(self) -> FakeSession.Binding:
        return self.Binding()

    def run_with_iobinding(self, binding: Any) -> None:
        pass


class FakeCuda:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.copies: list[tuple[int, int, int]] = []
        self.held: list[tuple[int, int, int]] = []  # queued holding the GIL
        self.synced: list[int] = []
        self.device = -1

    def set_device(self, index: int) -> None:
        self.device = index

    def new_stream(self) -> int:
        return 77

    def destroy_stream(self, stream: int) -> None:
        pass

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        if self.fail:
            raise OSError("libcudart.so: cannot open shared object file")
        self.copies.append((dst, nbytes, stream))

    def queue_copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.held.append((dst, nbytes, stream))

    def synchronize(self, stream: int) -> None:
        self.synced.append(stream)


def bound(copier: DeviceCopier) -> Bound:
    return Bound(FakeOrt, FakeSession(), [("x", (4, 3), "float32")], [("y", (4, 2), "float32")], "cuda", 1, copier)


def test_a_batch_reaches_the_bound_buffer_through_the_slot_stream_and_is_finished_before_the_run() -> None:
    cuda = FakeCuda()
    b = bound(DeviceCopier(1, cuda))
    x = np.ones((4, 3), np.float32)
    b.run({"x": x}, ["y"])
    b.run({"x": x}, ["y"])
    ptr = b.inputs["x"].data_ptr()
    assert cuda.copies == [(ptr, x.nbytes, 77), (ptr, x.nbytes, 77)] and cuda.synced == [77, 77]
    assert cuda.device == 1 and b.inputs["x"].updates == 0


def test_without_libcudart_onnx_runtime_copies_the_batch() -> None:
    copier = DeviceCopier(0, FakeCuda(fail=True))
    b = bound(copier)
    x = np.full((4, 3), 2, np.float32)
    b.run({"x": x}, ["y"])
    b.run({"x": x}, ["y"])
    assert copier.failed and b.inputs["x"].updates == 2
    np.testing.assert_array_equal(b.inputs["x"].array, x)


class HostValue(FakeValue):
    """A bound buffer in host memory at its real address, so the fake CUDA's copies land in it."""

    def __init__(self, shape: list[int], dtype: Any, ptr: int) -> None:
        super().__init__(shape, dtype, ptr)
        self.ptr = int(self.array.ctypes.data)


class HostOrt:
    class OrtValue:
        @classmethod
        def ortvalue_from_shape_and_type(cls, shape: list[int], dtype: Any, device: str, device_id: int) -> HostValue:
            return HostValue(shape, dtype, 0)


def test_a_batch_is_copied_to_the_device_request_by_request_and_padded_with_the_last_row() -> None:
    """No merged copy on the host: each request's rows go from where they lie into their place in the bound
    buffer, then the last row repeats up to the bucket, all on the slot's stream, waited for once."""
    from tests.gpu.fakes import FakeCuda as MemoryCuda

    cuda = MemoryCuda()
    b = Bound(HostOrt, FakeSession(), [("x", (4, 3), "float32")], [("y", (4, 2), "float32")], "cuda", 0,
              DeviceCopier(0, cuda))
    parts = [{"x": np.full((1, 3), 1, np.float32)}, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}]
    assert b.gathers
    b.run_rows(parts, ["y"])
    np.testing.assert_array_equal(b.inputs["x"].array, [[1, 1, 1], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    assert cuda.calls == ["h2d"] * 3 and b.inputs["x"].updates == 0


def test_when_the_copies_fail_the_batch_is_merged_on_the_host() -> None:
    copier = DeviceCopier(0, FakeCuda(fail=True))
    b = Bound(HostOrt, FakeSession(), [("x", (4, 3), "float32")], [("y", (4, 2), "float32")], "cuda", 0, copier)
    b.run_rows([{"x": np.full((1, 3), 7, np.float32)}, {"x": np.full((2, 3), 8, np.float32)}], ["y"])
    assert copier.failed and not b.gathers and b.inputs["x"].updates == 1
    np.testing.assert_array_equal(b.inputs["x"].array[:, 0], [7, 8, 8, 8])


def test_only_large_requests_are_copied_one_by_one() -> None:
    """A copy call per request pays off for images (602 KB each), not for a 64-byte row: small requests are
    merged on the host by the scheduler (``run_rows`` answers None)."""
    from trtop.serve.backends.onnxruntime_bind import GATHER_MIN_BYTES, BoundPool

    class Gathering:
        gathers = True

        def run_rows(self, parts: list[dict[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
            return {"y": np.concatenate([p["x"] for p in parts])}

    pool = BoundPool(1)
    pool.add(2, [Gathering()])  # type: ignore[list-item]
    row = GATHER_MIN_BYTES // 4
    big, small = ({"x": np.ones((1, n), np.float32)} for n in (row, 16))
    assert pool.in_slot(0, pool.run_rows, 2, [big, big], ["y"])["y"].shape == (2, row)
    assert pool.in_slot(0, pool.run_rows, 2, [small, small], ["y"]) is None
    assert pool.run_rows(2, [big, big], ["y"]) is None  # not on a slot's thread
    pool.close()


def test_handing_off_the_copies_are_queued_holding_the_gil_and_waited_for_once() -> None:
    """``--slot-handoff``: a slot's copies go through ``queue_copy_to_device`` (no GIL hand-over per copy), then one
    wait; without it, through ``copy_to_device``."""
    cuda = FakeCuda()
    b = bound(DeviceCopier(1, cuda, held=True))
    x = np.ones((4, 3), np.float32)
    b.run({"x": x}, ["y"])
    ptr = b.inputs["x"].data_ptr()
    assert cuda.held == [(ptr, x.nbytes, 77)] and cuda.copies == [] and cuda.synced == [77]


def test_a_copy_past_the_held_limit_lets_go_of_the_gil() -> None:
    """A copy larger than ``HELD_COPY_MAX_BYTES`` (from pageable memory the driver stages it, the GIL held all the
    while) goes through ``copy_to_device`` even handing off; the rows of a batch at or under it stay held."""
    from trtop.serve.backends.onnxruntime_bind import HELD_COPY_MAX_BYTES

    cuda = FakeCuda()
    copier = DeviceCopier(1, cuda, held=True)
    big = np.ones(HELD_COPY_MAX_BYTES // 4 + 1, np.float32)
    row = np.ones((1, HELD_COPY_MAX_BYTES // 4), np.float32)
    assert copier.copy(1000, big)
    assert cuda.copies == [(1000, big.nbytes, 77)] and cuda.held == []
    assert copier.copy_rows(5000, [row, row], 2)
    assert cuda.held == [(5000, row.nbytes, 77), (5000 + row.nbytes, row.nbytes, 77)]


def test_a_pool_that_hands_off_returns_from_submit_once_the_slot_reaches_its_run() -> None:
    """The caller (the event loop) lets go of the GIL until the slot's thread reaches its copies or its run
    (``Bound.run``), or its batch ends, or ``handoff_s`` passes; a pool that does not hand off returns at once."""
    import threading
    import time

    from trtop.serve.backends.onnxruntime_bind import BoundPool

    release, reached_run = threading.Event(), threading.Event()

    def batch() -> str:
        time.sleep(0.05)  # the thread's own work before its copies
        bound(DeviceCopier(0, FakeCuda())).run({"x": np.ones((4, 3), np.float32)}, ["y"])
        reached_run.set()
        release.wait(5)
        return "done"

    pool = BoundPool(1, handoff_s=5.0)
    assert pool.hands_off
    start = time.perf_counter()
    future = pool.submit(batch)
    waited = time.perf_counter() - start
    assert 0.04 <= waited < 4 and reached_run.wait(5) and not future.done()  # back once the run started
    release.set()
    assert future.result(5) == "done"
    start = time.perf_counter()
    assert pool.submit(lambda: "no run").result(5) == "no run"  # a batch that ends without a bound run
    assert time.perf_counter() - start < 4
    pool.close()
    plain = BoundPool(1)
    assert not plain.hands_off
    go = threading.Event()

    def gated() -> str:  # reaches its run only once ``go`` is set, 2 s from now
        go.wait(5)
        bound(DeviceCopier(0, FakeCuda())).run({"x": np.ones((4, 3), np.float32)}, ["y"])
        return "done"

    timer = threading.Timer(2.0, go.set)
    timer.start()
    future = plain.submit(gated)
    # Back before the slot could reach its run; an order, not a stopwatch (a loaded CI took 0.58 s to return).
    assert not go.is_set() and not future.done()
    assert future.result(5) == "done"
    timer.join()
    plain.close()


def test_a_pool_stops_holding_the_gil_for_its_copies_when_request_memory_stays_pageable() -> None:
    """``stop_holding`` (``OnnxRuntime.pin_host`` failed): the copiers made so far and those made after queue their
    copies through ``copy_to_device``, letting go of the GIL while the driver stages them."""
    from trtop.serve.backends.onnxruntime_bind import BoundPool

    pool = BoundPool(1, handoff_s=0.001)
    made = pool.copier(0)
    assert made.held
    pool.stop_holding()
    assert not made.held and not pool.in_slot(0, pool.copier, 0).held
    cuda = FakeCuda()
    made._cuda = cuda
    assert made.copy(1000, np.ones(4, np.float32)) and cuda.copies == [(1000, 16, 77)] and cuda.held == []
    pool.close()
