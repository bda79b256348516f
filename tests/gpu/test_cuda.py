"""The CUDA runtime boundary: every libcudart call checked and typed (fake library), and for real on a GPU.

The gpu-marked test needs an NVIDIA GPU and libcudart (no TensorRT): it copies through
pinned memory, captures the copies in a CUDA graph and replays it on new data.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import pytest

from tests.gpu.fakes import FakeCuda
from trtop.gpu import cuda as cuda_module
from trtop.gpu.cuda import CudaRuntime, HostBuffer
from trtop.gpu.errors import CudaError, MissingLibraryError


class _Fn:
    def __init__(self, lib: FakeLib, name: str) -> None:
        self.lib, self.name = lib, name
        self.restype: Any = None
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> Any:
        self.lib.calls.append((self.name, args))
        return self.lib.behave(self.name, args)


class FakeLib:
    """What ctypes.CDLL("libcudart.so") looks like to CudaRuntime."""

    def __init__(self, status: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.status = status or {}
        self.fns: dict[str, _Fn] = {}

    def __getattr__(self, name: str) -> _Fn:
        if name.startswith("cuda"):
            return self.fns.setdefault(name, _Fn(self, name))
        raise AttributeError(name)

    def behave(self, name: str, args: tuple[Any, ...]) -> Any:
        if name == "cudaGetErrorString":
            return {2: b"out of memory", 901: b"operation failed due to a previous error during capture"}[args[0]]
        for arg in args:
            if isinstance(arg, type(ctypes.byref(ctypes.c_void_p()))):
                arg._obj.value = 0xBEEF  # an out-parameter: hand back a handle
        return self.status.get(name, 0)


def test_every_call_is_declared_with_pointer_sized_arguments() -> None:
    lib = FakeLib()
    CudaRuntime(lib)
    for name in ("cudaMemcpyAsync", "cudaFree", "cudaGraphLaunch", "cudaStreamSynchronize"):
        assert lib.fns[name].argtypes[0] is ctypes.c_void_p and lib.fns[name].restype is ctypes.c_int
    assert lib.fns["cudaMemcpyAsync"].argtypes[-1] is ctypes.c_void_p  # the stream: never cut to a C int


def test_handles_come_back_and_copies_name_their_direction() -> None:
    lib = FakeLib()
    cuda = CudaRuntime(lib)
    assert cuda.alloc(16) == cuda.alloc_host(16) == cuda.new_stream() == 0xBEEF
    cuda.copy_to_device(0x10, 0x20, 64, 0xBEEF)
    cuda.copy_to_host(0x20, 0x10, 64, 0xBEEF)
    copies = [args for name, args in lib.calls if name == "cudaMemcpyAsync"]
    assert copies == [(0x10, 0x20, 64, 1, 0xBEEF), (0x20, 0x10, 64, 2, 0xBEEF)]
    assert [args[1:] for name, args in lib.calls if name == "cudaHostAlloc"] == [(16, 0)]


def test_failures_are_cuda_errors_with_the_drivers_words() -> None:
    cuda = CudaRuntime(FakeLib({"cudaMalloc": 2}))
    with pytest.raises(CudaError, match="cudaMalloc failed: out of memory \\(2\\)") as e:
        cuda.alloc(1 << 40)
    assert e.value.out_of_memory


def test_a_broken_capture_frees_the_graph_it_returned() -> None:
    lib = FakeLib({"cudaStreamEndCapture": 901})
    with pytest.raises(CudaError, match="previous error during capture") as e:
        CudaRuntime(lib).end_capture(7)
    assert not e.value.out_of_memory
    assert ("cudaGraphDestroy", (0xBEEF,)) in lib.calls


def test_host_buffers_are_numpy_views_of_pinned_memory() -> None:
    cuda = FakeCuda()
    buf = HostBuffer(cuda, (2, 3), np.dtype(np.float32))
    buf.array[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert buf.nbytes == 24 and ctypes.string_at(buf.ptr, 24) == buf.array.tobytes()
    buf.free()
    buf.free()
    assert cuda.pinned == {}


def test_no_libcudart_says_which_image_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(cuda_module.ctypes, "CDLL", refuse)
    with pytest.raises(MissingLibraryError, match="libcudart.*converter or GPU server image"):
        CudaRuntime()


@pytest.mark.gpu
def test_pinned_copies_and_a_graph_replay_on_a_real_gpu() -> None:
    try:
        cuda = CudaRuntime()
    except MissingLibraryError as e:
        pytest.skip(str(e))
    try:
        cuda.set_device(0)
    except CudaError as e:
        pytest.skip(f"no usable GPU: {e}")
    stream = cuda.new_stream()
    src, dst = HostBuffer(cuda, (1 << 20,), np.dtype(np.float32)), HostBuffer(cuda, (1 << 20,), np.dtype(np.float32))
    dev = cuda.alloc(src.nbytes)
    graph = graph_exec = 0
    try:
        src.array[...] = np.arange(1 << 20, dtype=np.float32)
        cuda.copy_to_device(dev, src.ptr, src.nbytes, stream)
        cuda.copy_to_host(dst.ptr, dev, dst.nbytes, stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(dst.array, src.array)
        src.array[...] = 7.0  # the same copy queued holding the GIL (--slot-handoff; ctypes.PyDLL of libcudart)
        cuda.queue_copy_to_device(dev, src.ptr, src.nbytes, stream)
        cuda.copy_to_host(dst.ptr, dev, dst.nbytes, stream)
        cuda.synchronize(stream)
        assert float(dst.array.min()) == float(dst.array.max()) == 7.0

        cuda.begin_capture(stream)
        cuda.copy_to_device(dev, src.ptr, src.nbytes, stream)
        cuda.copy_to_host(dst.ptr, dev, dst.nbytes, stream)
        graph = cuda.end_capture(stream)
        graph_exec = cuda.instantiate(graph)
        for k in (3.0, -1.5):  # the graph reads the pinned buffer as it is at launch
            src.array[...] = k
            cuda.launch(graph_exec, stream)
            cuda.synchronize(stream)
            assert float(dst.array.min()) == float(dst.array.max()) == k
        with pytest.raises(CudaError) as oom:
            cuda.alloc(1 << 50)  # 1 PiB
        assert oom.value.out_of_memory
        cuda.clear_error()
    finally:
        if graph_exec:
            cuda.destroy_graph_exec(graph_exec)
        if graph:
            cuda.destroy_graph(graph)
        cuda.free(dev)
        src.free()
        dst.free()
        cuda.destroy_stream(stream)


def test_a_copy_queued_holding_the_gil_is_the_same_checked_copy() -> None:
    """``queue_copy_to_device`` (``--slot-handoff``) calls cudaMemcpyAsync host-to-device on the stream, checked like
    every call; with a library that is no ``ctypes.CDLL`` (no ``ctypes.PyDLL`` of it) through the library itself."""
    lib = FakeLib()
    cuda = CudaRuntime(lib)
    cuda.queue_copy_to_device(0x1000, 0x2000, 64, 0x77)
    assert lib.calls[-1] == ("cudaMemcpyAsync", (0x1000, 0x2000, 64, 1, 0x77))
    failing = CudaRuntime(FakeLib({"cudaMemcpyAsync": 2}))
    with pytest.raises(CudaError, match="copy to the GPU failed: out of memory"):
        failing.queue_copy_to_device(0x1000, 0x2000, 64, 0x77)


class _Recording:
    """A real CudaRuntime that notes which host-to-device call each copy took."""

    def __init__(self, cuda: CudaRuntime) -> None:
        self._cuda, self.calls = cuda, list[tuple[str, int]]()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cuda, name)

    def queue_copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.calls.append(("held", nbytes))
        self._cuda.queue_copy_to_device(dst, src, nbytes, stream)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.calls.append(("released", nbytes))
        self._cuda.copy_to_device(dst, src, nbytes, stream)


@pytest.mark.gpu
def test_a_slots_held_copies_land_whole_on_a_real_gpu_at_and_past_the_limit() -> None:
    """``--slot-handoff``'s copier on a real GPU: a request in page-locked memory under the limit is queued holding
    the GIL, a pageable one past it (a merged batch) lets go, and a batch's rows plus padding land in order either
    way."""
    from trtop.serve.backends.onnxruntime_bind import HELD_COPY_MAX_BYTES, DeviceCopier

    try:
        real = CudaRuntime()
        real.set_device(0)
    except (MissingLibraryError, CudaError) as e:
        pytest.skip(f"no usable GPU: {e}")
    cuda = _Recording(real)
    copier = DeviceCopier(0, cuda=cuda, held=True)
    row = 3 * 224 * 224  # a ResNet-50 image, 602 KB in float32
    pinned = HostBuffer(real, (2, row), np.dtype(np.float32))
    big = np.arange(2 * HELD_COPY_MAX_BYTES // 4, dtype=np.float32)  # pageable, 2 MiB
    out = np.empty(4 * row, dtype=np.float32)
    dev = real.alloc(max(big.nbytes, out.nbytes))
    try:
        assert copier.copy(dev, big)
        back = np.empty_like(big)
        real.copy_to_host(int(back.ctypes.data), dev, back.nbytes, 0)
        real.synchronize(0)
        np.testing.assert_array_equal(back, big)
        assert cuda.calls == [("released", big.nbytes)]

        cuda.calls.clear()
        pinned.array[0], pinned.array[1] = 1.0, 2.0
        assert copier.copy_rows(dev, [pinned.array[:1], pinned.array[1:]], rows=4)  # two requests, padded to 4
        real.copy_to_host(int(out.ctypes.data), dev, out.nbytes, 0)
        real.synchronize(0)
        assert [float(out[k * row]) for k in range(4)] == [1.0, 2.0, 2.0, 2.0]
        assert all(kind == "held" for kind, _ in cuda.calls) and len(cuda.calls) == 4
    finally:
        copier.close()
        real.free(dev)
        pinned.free()
