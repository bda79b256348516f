"""Run a serialized TensorRT engine on numpy inputs: the converter's way to verify and time what it built.

TensorRT 10/11 tensor-name API (``num_io_tensors``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); device memory through the CUDA runtime
library loaded with ctypes (present wherever TensorRT is: its wheels depend on it and
the NVIDIA images carry it), so no extra Python package is needed. Timings include the
host<->device copies: what a client of the server would see. Called by ``pipeline.py``
when the backend is ``tensorrt``; imports TensorRT lazily.
"""
from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from trtop.convert.errors import MissingDependencyError, ResourceError

if TYPE_CHECKING:
    import tensorrt as trt

_H2D, _D2H = 1, 2  # cudaMemcpyKind
# tensorrt.DataType member name -> numpy dtype (I/O stays fp32 after AutoCast with keep_io_types).
_NUMPY_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
                "BOOL": "bool", "UINT8": "uint8"}


class CudaRuntime:
    """The handful of libcudart calls a synchronous inference needs."""

    def __init__(self) -> None:
        self.lib = _load_cudart()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            text: bytes = self.lib.cudaGetErrorString(status) or b"?"
            error = ResourceError if status == 2 else RuntimeError  # 2 = cudaErrorMemoryAllocation
            raise error(f"CUDA {what} failed: {text.decode()} ({status})")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), array.ctypes.data_as(ctypes.c_void_p),
                                        ctypes.c_size_t(array.nbytes), _H2D), "cudaMemcpy to device")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._check(self.lib.cudaMemcpy(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                        ctypes.c_size_t(array.nbytes), _D2H), "cudaMemcpy to host")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


class TrtRunner:
    """Deserialize once, then ``runner(feeds) -> outputs`` on any batch within the profile."""

    def __init__(self, plan: bytes, cuda: CudaRuntime | None = None) -> None:
        import tensorrt as trt

        self.cuda = cuda or CudaRuntime()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built (see the log above)")
        self.engine: trt.ICudaEngine = engine
        self.context = self.engine.create_execution_context()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, np.dtype[np.generic]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(name)
            (self.inputs if mode == trt.TensorIOMode.INPUT else self.outputs).append(name)
            self.dtypes[name] = _numpy_dtype(name, self.engine.get_tensor_dtype(name).name)
        self.stream = self.cuda.stream()

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        allocations: list[int] = []
        try:
            for name in self.inputs:
                array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
                self.context.set_input_shape(name, list(array.shape))
                ptr = self.cuda.malloc(array.nbytes)
                allocations.append(ptr)
                self.cuda.to_device(ptr, array)
                self.context.set_tensor_address(name, ptr)
            results: dict[str, np.ndarray] = {}
            for name in self.outputs:
                shape = self.context.get_tensor_shape(name)
                results[name] = np.empty([shape[j] for j in range(len(shape))], dtype=self.dtypes[name])
                ptr = self.cuda.malloc(results[name].nbytes)
                allocations.append(ptr)
                self.context.set_tensor_address(name, ptr)
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")
            self.cuda.synchronize(self.stream)
            for name, ptr in zip(self.outputs, allocations[len(self.inputs):]):
                self.cuda.to_host(results[name], ptr)
            return results
        finally:
            for ptr in allocations:
                self.cuda.free(ptr)


def _numpy_dtype(tensor: str, trt_type: str) -> np.dtype[np.generic]:
    if trt_type not in _NUMPY_TYPES:
        raise RuntimeError(f"engine I/O tensor {tensor!r} has TensorRT type {trt_type}, which numpy cannot hold")
    return np.dtype(_NUMPY_TYPES[trt_type])


def _load_cudart() -> ctypes.CDLL:
    candidates = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    # The CUDA runtime wheel TensorRT's pip packages depend on (nvidia-cuda-runtime-cuXX).
    for site in {os.path.dirname(os.path.dirname(np.__file__))}:
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "lib", "libcudart.so*")))
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise MissingDependencyError(
        "the CUDA runtime library (libcudart) is not loadable: it is needed to run the built engine for "
        "verification. Use the converter image (built on nvcr.io/nvidia/tensorrt)."
    )
