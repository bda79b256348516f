"""Fakes at the GPU boundary: CUDA (``FakeCuda``) and TensorRT's runtime API (``add_fake_runtime``).

TensorRT cannot run where these tests run (see docs/server.md). ``FakeCuda`` holds
"device" and pinned memory as real host memory (ctypes buffers), so pointers, copies and
numpy views over pinned memory behave as on a GPU; work put on a stream runs at once,
except while the stream is being captured, when it is recorded into a graph that
``launch`` replays: a test can tell a graph replay from a plain run, and a graph that
reads stale buffers gives wrong numbers. The fake engine follows TensorRT 10's tensor-name
API (profiles, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``,
user-managed activation memory) and computes its outputs with a Python function.
"""
from __future__ import annotations

import ctypes
import enum
import importlib
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from trtop.gpu.errors import CudaError

Compute = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class FakeCuda:
    def __init__(self, *, capture_fails: bool = False) -> None:
        self.device: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.pinned: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.registered: dict[int, int] = {}  # host memory page-locked in place: address -> bytes
        self.capturing: dict[int, list[Callable[[], None]]] = {}
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.execs: dict[int, list[Callable[[], None]]] = {}
        self.streams: set[int] = set()
        self.calls: list[str] = []
        self.capture_fails = capture_fails
        self.device_index = -1
        self._ids = 100

    def _id(self) -> int:
        self._ids += 1
        return self._ids

    def set_device(self, index: int) -> None:
        self.device_index = index

    def new_stream(self) -> int:
        stream = self._id()
        self.streams.add(stream)
        return stream

    def destroy_stream(self, stream: int) -> None:
        self.streams.remove(stream)

    def alloc(self, nbytes: int) -> int:
        if nbytes > 1 << 34:
            raise CudaError(f"CUDA cudaMalloc failed: out of memory ({CudaError.OUT_OF_MEMORY})", CudaError.OUT_OF_MEMORY)
        buf = ctypes.create_string_buffer(max(nbytes, 1))
        self.device[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free(self, ptr: int) -> None:
        del self.device[ptr]

    def alloc_host(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(nbytes, 1))
        self.pinned[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free_host(self, ptr: int) -> None:
        del self.pinned[ptr]

    def register_host(self, ptr: int, nbytes: int) -> None:
        self.registered[ptr] = nbytes

    def enqueue(self, stream: int, op: Callable[[], None]) -> None:
        assert stream in self.streams, "work on a stream that does not exist"
        if stream in self.capturing:
            self.capturing[stream].append(op)
        else:
            op()

    def _copy(self, dst: int, src: int, nbytes: int, stream: int, kind: str) -> None:
        if stream in self.capturing:  # graphs must copy from/to page-locked memory: pageable runs at 1/8 the speed
            host = src if kind == "h2d" else dst
            assert any(p <= host < p + len(b) for p, b in self.pinned.items()), "capture of a pageable copy"
        self.calls.append(kind)
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes) and None)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._copy(dst, src, nbytes, stream, "h2d")

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._copy(dst, src, nbytes, stream, "d2h")

    def synchronize(self, stream: int) -> None:
        assert stream not in self.capturing, "synchronize while capturing invalidates the capture"

    def begin_capture(self, stream: int) -> None:
        self.capturing[stream] = []

    def end_capture(self, stream: int) -> int:
        ops = self.capturing.pop(stream)
        if self.capture_fails:
            raise CudaError("CUDA cudaStreamEndCapture failed: operation not permitted when stream is capturing "
                            "(900)", 900)
        graph = self._id()
        self.graphs[graph] = ops
        return graph

    def instantiate(self, graph: int) -> int:
        exec_id = self._id()
        self.execs[exec_id] = list(self.graphs[graph])
        return exec_id

    def launch(self, graph_exec: int, stream: int) -> None:
        self.calls.append("launch")
        for op in self.execs[graph_exec]:
            op()

    def destroy_graph(self, graph: int) -> None:
        del self.graphs[graph]

    def destroy_graph_exec(self, graph_exec: int) -> None:
        del self.execs[graph_exec]

    def clear_error(self) -> None:
        self.calls.append("clear_error")

    def held(self) -> dict[str, int]:
        """What is still allocated: all zeros after a clean close."""
        return {"device": len(self.device), "pinned": len(self.pinned), "graphs": len(self.graphs),
                "execs": len(self.execs), "streams": len(self.streams)}


NUMPY = {"FLOAT": np.float32, "INT64": np.int64, "INT32": np.int32}  # TensorRT DataType -> numpy (BF16 has none)


class _Severity(enum.IntEnum):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


class TensorIOMode(enum.Enum):
    INPUT, OUTPUT = 1, 2


class FakeEngine:
    """An engine: I/O ``{name: (dtype, shape)}`` (-1 = the batch), profiles [(min, opt, max)] of the batch."""

    def __init__(self, cuda: FakeCuda, inputs: Mapping[str, tuple[str, tuple[int, ...]]],
                 outputs: Mapping[str, tuple[str, tuple[int, ...]]], profiles: Sequence[tuple[int, int, int]],
                 compute: Compute, *, breaks_capture: bool = False, activation_bytes: int | None = 4096) -> None:
        self.cuda, self.io_inputs, self.io_outputs = cuda, dict(inputs), dict(outputs)
        self.profiles, self.compute, self.breaks_capture = list(profiles), compute, breaks_capture
        self.contexts: list[FakeContext] = []
        self.names = [*inputs, *outputs]
        if activation_bytes is not None:
            self.device_memory_size_v2 = activation_bytes

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.io_inputs else TensorIOMode.OUTPUT

    def _io(self, name: str) -> tuple[str, tuple[int, ...]]:
        return self.io_inputs.get(name) or self.io_outputs[name]

    def get_tensor_dtype(self, name: str) -> str:
        return self._io(name)[0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._io(name)[1]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        rest = self.io_inputs[name][1][1:]
        return [(b, *rest) for b in self.profiles[profile]]

    def create_execution_context(self, strategy: Any = None) -> FakeContext:
        context = FakeContext(self, user_managed=strategy == "USER_MANAGED")
        self.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine: FakeEngine, *, user_managed: bool) -> None:
        self.engine, self.user_managed = engine, user_managed
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        self.runs = 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.profile = index
        return True

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.memory = (ptr, size)

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        low, _, high = self.engine.profiles[self.profile]
        if not low <= shape[0] <= high or tuple(shape[1:]) != self.engine.io_inputs[name][1][1:]:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        batch = next(iter(self.shapes.values()))[0]
        shape = self.engine.io_outputs[name][1]
        return (batch, *shape[1:]) if shape[0] < 0 else shape

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        engine, cuda = self.engine, self.engine.cuda
        if self.user_managed and self.memory is None:
            return False  # TensorRT needs the activation memory it was told it would get
        if engine.breaks_capture and stream in cuda.capturing:
            return False
        self.runs += 1

        def op() -> None:
            feeds = {name: _read(self.addresses[name], NUMPY[engine.io_inputs[name][0]], self.shapes[name])
                     for name in engine.io_inputs}
            for name, value in engine.compute(feeds).items():
                value = np.ascontiguousarray(value, dtype=NUMPY[engine.io_outputs[name][0]])
                assert value.shape == self.get_tensor_shape(name), (name, value.shape)
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)

        cuda.enqueue(stream, op)
        return True


def _read(ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.frombuffer(ctypes.string_at(ptr, count * np.dtype(dtype).itemsize), dtype=dtype).reshape(shape).copy()


def add_fake_runtime(trt: types.ModuleType, load: Callable[[bytes], FakeEngine | None]) -> types.ModuleType:
    """Give a (fake) ``tensorrt`` module the runtime half: ``Runtime(logger).deserialize_cuda_engine(plan)``."""

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            pass

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            engine = load(bytes(data))
            if engine is None:
                self.logger.log(trt.ILogger.Severity.ERROR, "The engine plan file is generated on an incompatible "
                                "device, expecting compute 8.9 got compute 9.0, please rebuild.")
            return engine

    if not hasattr(trt, "ILogger"):
        trt.ILogger = ILogger  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.TensorIOMode = TensorIOMode  # type: ignore[attr-defined]
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(  # type: ignore[attr-defined]
        STATIC="STATIC", USER_MANAGED="USER_MANAGED")
    trt.nptype = lambda dtype: NUMPY[dtype]  # type: ignore[attr-defined]
    return trt


def fake_tensorrt(load: Callable[[bytes], FakeEngine | None], version: str = "10.13.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    return add_fake_runtime(trt, load)


ENGINE_MODULES = ("trtop.gpu.tensorrt", "trtop.serve.backends.tensorrt_impl")


def import_with_fake(monkeypatch: pytest.MonkeyPatch, trt: types.ModuleType, module: str) -> types.ModuleType:
    """``module`` imported against the fake ``tensorrt``; it and the modules bound to it go at teardown."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name in ENGINE_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    imported = importlib.import_module(module)
    for name in ENGINE_MODULES:
        if name in sys.modules:
            monkeypatch.setitem(sys.modules, name, sys.modules[name])  # undone (removed) at teardown
    return imported


def affine(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The default fake model: y = 2x + 1."""
    return {"y": feeds["x"] * 2 + 1}
