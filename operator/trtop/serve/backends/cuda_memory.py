"""The CUDA boundary of the TensorRT backend: device buffers, streams and copies via cuda-python.

Kept to the few calls the TensorRT runtime needs so tests can replace it with a fake
(no GPU exists where the tests run). Works with ``cuda.bindings.runtime``
(cuda-python >= 12.6) and the older ``cuda.cudart`` module.
"""
from __future__ import annotations

import importlib
from typing import Any, Protocol

from trtop.serve.errors import StartupError
from trtop.serve.types import Array


class DeviceMemory(Protocol):
    """What the TensorRT runtime needs from CUDA (pointers and streams are plain ints)."""

    def set_device(self, index: int) -> None: ...

    def new_stream(self) -> int: ...

    def alloc(self, nbytes: int) -> int: ...

    def free(self, ptr: int) -> None: ...

    def to_device(self, ptr: int, host: Array, stream: int) -> None: ...

    def to_host(self, host: Array, ptr: int, stream: int) -> None: ...

    def synchronize(self, stream: int) -> None: ...


def _cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise StartupError(
        "the TensorRT backend needs cuda-python (pip install cuda-python) for device memory; "
        "it is part of the GPU server image"
    )


class CudaRuntime:
    """``DeviceMemory`` over the CUDA runtime API of cuda-python."""

    def __init__(self) -> None:
        self._rt = _cudart()

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            _, text = self._rt.cudaGetErrorString(err)
            raise RuntimeError(f"CUDA {what} failed: {text.decode() if isinstance(text, bytes) else text}")
        return rest[0] if len(rest) == 1 else None

    def set_device(self, index: int) -> None:
        self._check(self._rt.cudaSetDevice(index), f"cudaSetDevice({index})")

    def new_stream(self) -> int:
        return int(self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate"))

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def to_device(self, ptr: int, host: Array, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "copy to GPU")

    def to_host(self, host: Array, ptr: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream), "copy from GPU")

    def synchronize(self, stream: int) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
