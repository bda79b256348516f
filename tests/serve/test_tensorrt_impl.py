"""The TensorRT backend against a fake ``tensorrt`` module and fake CUDA memory.

TensorRT cannot run on the machines this is developed on (see docs/server.md); these
fakes follow the TensorRT 10 Python API the backend uses (tensors by name,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) and hold "device"
memory as byte arrays, so the data path (copy in, run, copy out, buffer growth) is real.
"""
from __future__ import annotations

import enum
import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trtop.serve.errors import InferenceFailed, StartupError
from trtop.serve.runtime import RuntimeOptions


class FakeCuda:
    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.freed: list[int] = []
        self.device = -1
        self._next = 0x1000

    def set_device(self, index: int) -> None:
        self.device = index

    def new_stream(self) -> int:
        return 7

    def alloc(self, nbytes: int) -> int:
        self._next += 0x1000
        self.memory[self._next] = bytearray(nbytes)
        return self._next

    def free(self, ptr: int) -> None:
        del self.memory[ptr]
        self.freed.append(ptr)

    def to_device(self, ptr: int, host: np.ndarray, stream: int) -> None:
        self.memory[ptr][: host.nbytes] = host.tobytes()

    def to_host(self, host: np.ndarray, ptr: int, stream: int) -> None:
        host[...] = np.frombuffer(bytes(self.memory[ptr][: host.nbytes]), host.dtype).reshape(host.shape)

    def synchronize(self, stream: int) -> None:
        pass


def fake_tensorrt(cuda: FakeCuda) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0"  # type: ignore[attr-defined]

    class _Severity(enum.IntEnum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            pass

    class TensorIOMode(enum.Enum):
        INPUT, OUTPUT = 1, 2

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            if not 1 <= shape[0] <= 16 or tuple(shape[1:]) != (4,):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.shapes["x"][0], 4)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            n = self.shapes["x"][0]
            x = np.frombuffer(bytes(cuda.memory[self.addresses["x"]][: n * 16]), np.float32)
            cuda.memory[self.addresses["y"]][: n * 16] = (x * 2 + 1).astype(np.float32).tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["x", "y"][i]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if name == "x" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 4)

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [(1, 4), (8, 4), (16, 4)]

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if data != b"good plan":
                self.logger.log(_Severity.ERROR, "The engine plan file is generated on an incompatible device, "
                                                "expecting compute 8.9 got compute 9.0, please rebuild.")
                return None
            return Engine()

    trt.ILogger, trt.TensorIOMode, trt.Runtime = ILogger, TensorIOMode, Runtime  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: {"FLOAT": np.float32}[dtype]  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def cuda() -> FakeCuda:
    return FakeCuda()


@pytest.fixture
def trt_impl(monkeypatch: pytest.MonkeyPatch, cuda: FakeCuda) -> Iterator[types.ModuleType]:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cuda))
    monkeypatch.delitem(sys.modules, "trtop.serve.backends.tensorrt_impl", raising=False)
    yield importlib.import_module("trtop.serve.backends.tensorrt_impl")
    sys.modules.pop("trtop.serve.backends.tensorrt_impl", None)


def plan(tmp_path: Path, data: bytes = b"good plan") -> Path:
    path = tmp_path / "model.plan"
    path.write_bytes(data)
    return path


def test_reads_the_engines_interface_and_profile(trt_impl: types.ModuleType, cuda: FakeCuda, tmp_path: Path) -> None:
    rt = trt_impl.TensorRTRuntime(plan(tmp_path), RuntimeOptions(device_index=0), cuda=cuda)
    assert [(s.name, s.dtype, s.shape) for s in rt.inputs] == [("x", "float32", (-1, 4))]
    assert [s.name for s in rt.outputs] == ["y"]
    assert rt.max_batch == 16 and rt.platform == "tensorrt_plan" and cuda.device == 0


def test_runs_batches_through_device_buffers_that_grow(trt_impl: types.ModuleType, cuda: FakeCuda,
                                                        tmp_path: Path) -> None:
    rt = trt_impl.TensorRTRuntime(plan(tmp_path), RuntimeOptions(), cuda=cuda)
    for rows in (3, 10, 2):
        x = np.random.rand(rows, 4).astype(np.float32)
        np.testing.assert_allclose(rt.run({"x": x}, ["y"])["y"], x * 2 + 1, rtol=1e-6)
    assert len(cuda.freed) == 2  # the 3-row buffers were replaced once by 10-row ones
    rt.close()
    assert cuda.memory == {}


def test_shapes_outside_the_profile_fail_the_request(trt_impl: types.ModuleType, cuda: FakeCuda,
                                                     tmp_path: Path) -> None:
    rt = trt_impl.TensorRTRuntime(plan(tmp_path), RuntimeOptions(), cuda=cuda)
    with pytest.raises(InferenceFailed, match="outside the engine's profile"):
        rt.run({"x": np.zeros((17, 4), np.float32)}, ["y"])


def test_an_engine_for_another_gpu_fails_to_load_with_tensorrts_reason(trt_impl: types.ModuleType, cuda: FakeCuda,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="expecting compute 8.9 got compute 9.0.*rebuild it for this node"):
        trt_impl.TensorRTRuntime(plan(tmp_path, b"other"), RuntimeOptions(), cuda=cuda)


class FakeCudart:
    """The slice of ``cuda.bindings.runtime`` that CudaRuntime calls."""

    class cudaError_t(enum.Enum):  # noqa: N801 - cuda-python's name
        cudaSuccess, cudaErrorMemoryAllocation = 0, 2

    class cudaMemcpyKind(enum.Enum):  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def cudaMalloc(self, n: int) -> tuple[Any, int]:  # noqa: N802
        if n > 1 << 40:
            return (self.cudaError_t.cudaErrorMemoryAllocation, 0)
        return (self.cudaError_t.cudaSuccess, 0xBEEF)

    def cudaGetErrorString(self, err: Any) -> tuple[Any, bytes]:  # noqa: N802
        return (self.cudaError_t.cudaSuccess, b"out of memory")

    def cudaMemcpyAsync(self, *args: Any) -> tuple[Any]:  # noqa: N802
        self.calls.append(args)
        return (self.cudaError_t.cudaSuccess,)


def test_cuda_boundary_checks_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from trtop.serve.backends import cuda_memory

    fake = FakeCudart()
    monkeypatch.setattr(cuda_memory, "_cudart", lambda: fake)
    cr = cuda_memory.CudaRuntime()
    assert cr.alloc(16) == 0xBEEF
    host = np.zeros(4, np.float32)
    cr.to_device(0xBEEF, host, 7)
    assert fake.calls[0][1:] == (host.ctypes.data, 16, fake.cudaMemcpyKind.cudaMemcpyHostToDevice, 7)
    with pytest.raises(RuntimeError, match="cudaMalloc.*out of memory"):
        cr.alloc(1 << 41)


def test_without_cuda_python_the_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from trtop.serve.backends import cuda_memory

    monkeypatch.setitem(sys.modules, "cuda", None)
    with pytest.raises(StartupError, match="needs cuda-python"):
        cuda_memory.CudaRuntime()
