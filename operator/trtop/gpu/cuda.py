"""The CUDA runtime calls an engine needs: device and pinned host memory, streams, async copies, CUDA graphs.

One implementation for the converter and the server: libcudart through ctypes (it ships
wherever TensorRT does: NVIDIA's images carry it and TensorRT's wheels depend on
``nvidia-cuda-runtime``), so no Python CUDA package is needed. Pointers, streams and
graphs are plain ints. ``Cuda`` is the protocol ``tensorrt.TensorRTEngine`` and
``bucket`` call, so tests run them on a fake; ``default_cuda()`` loads the real one once
per process. ``HostBuffer`` is a page-locked host array: copies from it run at full PCIe
/ NVLink speed, asynchronously, and may be captured in a CUDA graph (copies from
pageable memory may not).
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from trtop.gpu.errors import CudaError, MissingLibraryError

_H2D, _D2H = 1, 2  # cudaMemcpyKind
_STREAM_NON_BLOCKING = 1  # cudaStreamNonBlocking: no implicit sync with the legacy default stream
_CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal: other threads' CUDA calls stay legal
_P, _SIZE, _UINT, _INT = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int
_PP = ctypes.POINTER(ctypes.c_void_p)
# name -> argtypes (every call returns cudaError_t): declared so 64-bit pointers are never cut to C ints.
_SIGNATURES: dict[str, list[Any]] = {
    "cudaSetDevice": [_INT],
    "cudaMalloc": [_PP, _SIZE],
    "cudaFree": [_P],
    "cudaHostAlloc": [_PP, _SIZE, _UINT],
    "cudaFreeHost": [_P],
    "cudaHostRegister": [_P, _SIZE, _UINT],
    "cudaMemcpyAsync": [_P, _P, _SIZE, _INT, _P],
    "cudaStreamCreateWithFlags": [_PP, _UINT],
    "cudaStreamDestroy": [_P],
    "cudaStreamSynchronize": [_P],
    "cudaStreamBeginCapture": [_P, _INT],
    "cudaStreamEndCapture": [_P, _PP],
    "cudaGraphInstantiateWithFlags": [_PP, _P, ctypes.c_ulonglong],  # CUDA >= 11.4, one signature since
    "cudaGraphLaunch": [_P, _P],
    "cudaGraphExecDestroy": [_P],
    "cudaGraphDestroy": [_P],
    "cudaGetLastError": [],
}

Array = npt.NDArray[Any]


class Cuda(Protocol):
    """What the engine code needs from CUDA; ``CudaRuntime`` is the real one."""

    def set_device(self, index: int) -> None: ...
    def new_stream(self) -> int: ...
    def destroy_stream(self, stream: int) -> None: ...
    def alloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def alloc_host(self, nbytes: int) -> int: ...  # page-locked
    def free_host(self, ptr: int) -> None: ...
    def register_host(self, ptr: int, nbytes: int) -> None: ...  # page-lock memory allocated elsewhere (kept)
    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None: ...
    # the same, queued without letting go of the GIL (from page-locked memory it returns at once)
    def queue_copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None: ...
    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None: ...
    def synchronize(self, stream: int) -> None: ...
    def begin_capture(self, stream: int) -> None: ...
    def end_capture(self, stream: int) -> int: ...  # the graph; CudaError when the capture broke
    def instantiate(self, graph: int) -> int: ...
    def launch(self, graph_exec: int, stream: int) -> None: ...
    def destroy_graph(self, graph: int) -> None: ...
    def destroy_graph_exec(self, graph_exec: int) -> None: ...
    def clear_error(self) -> None: ...


class CudaRuntime:
    """``Cuda`` over libcudart; every call's status is checked and turned into ``CudaError``."""

    def __init__(self, lib: Any = None) -> None:
        self.lib = lib if lib is not None else _load_cudart()
        self._held_copy: Any = None  # cudaMemcpyAsync through ctypes.PyDLL (queue_copy_to_device)
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaGetErrorString.argtypes = [_INT]
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = _INT, argtypes

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            text: bytes = self.lib.cudaGetErrorString(status) or b"?"
            raise CudaError(f"CUDA {what} failed: {text.decode()} ({status})", status)

    def _out(self, call: str, *args: Any) -> int:
        handle = ctypes.c_void_p()
        self._check(getattr(self.lib, call)(ctypes.byref(handle), *args), call)
        return int(handle.value or 0)

    def set_device(self, index: int) -> None:
        self._check(self.lib.cudaSetDevice(index), f"cudaSetDevice({index})")

    def new_stream(self) -> int:
        return self._out("cudaStreamCreateWithFlags", _STREAM_NON_BLOCKING)

    def destroy_stream(self, stream: int) -> None:
        self._check(self.lib.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def alloc(self, nbytes: int) -> int:
        return self._out("cudaMalloc", max(nbytes, 1))

    def free(self, ptr: int) -> None:
        self._check(self.lib.cudaFree(ptr), "cudaFree")

    def alloc_host(self, nbytes: int) -> int:
        return self._out("cudaHostAlloc", max(nbytes, 1), 0)

    def free_host(self, ptr: int) -> None:
        self._check(self.lib.cudaFreeHost(ptr), "cudaFreeHost")

    def register_host(self, ptr: int, nbytes: int) -> None:
        """Page-lock existing host memory (e.g. a shared arena) so copies from it run as DMA at full speed."""
        self._check(self.lib.cudaHostRegister(ptr, nbytes, 0), "cudaHostRegister")

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._check(self.lib.cudaMemcpyAsync(dst, src, nbytes, _H2D, stream), "copy to the GPU")

    def queue_copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """``copy_to_device`` holding the GIL: a ``ctypes`` call lets go of it and takes it back after, and a
        thread that queues a batch's copies one request at a time then waits for a busy event loop at each
        (``--slot-handoff``). From page-locked memory the call only queues the copy; from pageable memory it
        waits for the driver to stage it, with the GIL held. Falls back to ``copy_to_device`` where the
        library cannot be opened that way (a library object that is no ``ctypes.CDLL``)."""
        held = self._held_copy
        if held is None:
            try:
                held = ctypes.PyDLL(self.lib._name).cudaMemcpyAsync
                held.restype, held.argtypes = _INT, _SIGNATURES["cudaMemcpyAsync"]
            except (AttributeError, OSError, TypeError):
                held = self.lib.cudaMemcpyAsync
            self._held_copy = held
        self._check(held(dst, src, nbytes, _H2D, stream), "copy to the GPU")

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._check(self.lib.cudaMemcpyAsync(dst, src, nbytes, _D2H, stream), "copy from the GPU")

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def begin_capture(self, stream: int) -> None:
        self._check(self.lib.cudaStreamBeginCapture(stream, _CAPTURE_THREAD_LOCAL), "cudaStreamBeginCapture")

    def end_capture(self, stream: int) -> int:
        graph = ctypes.c_void_p()
        status = self.lib.cudaStreamEndCapture(stream, ctypes.byref(graph))
        if status != 0 and graph.value:  # an invalidated capture can still hand back a graph
            self.lib.cudaGraphDestroy(graph.value)
        self._check(status, "cudaStreamEndCapture")
        return int(graph.value or 0)

    def instantiate(self, graph: int) -> int:
        return self._out("cudaGraphInstantiateWithFlags", graph, 0)

    def launch(self, graph_exec: int, stream: int) -> None:
        self._check(self.lib.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: int) -> None:
        self._check(self.lib.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def destroy_graph_exec(self, graph_exec: int) -> None:
        self._check(self.lib.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def clear_error(self) -> None:
        self.lib.cudaGetLastError()  # resets the last non-sticky error (a failed capture leaves one)


class HostBuffer:
    """A page-locked host allocation seen as a numpy array of ``shape`` and ``dtype``; ``free()`` it once."""

    def __init__(self, cuda: Cuda, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._cuda = cuda
        self.ptr = cuda.alloc_host(self.nbytes)
        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)
        count = self.nbytes // dtype.itemsize
        self.array: Array = np.frombuffer(memoryview(raw), dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            del self.array  # no view may outlive the memory
            self._cuda.free_host(self.ptr)
            self.ptr = 0


_default: Cuda | None = None
_default_lock = threading.Lock()


def default_cuda() -> Cuda:
    """The process's ``CudaRuntime`` (libcudart is loaded once)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = CudaRuntime()
        return _default


def _load_cudart() -> ctypes.CDLL:
    candidates = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    # The CUDA runtime wheels TensorRT's and PyTorch's pip packages depend on (nvidia-cuda-runtime-cuXX).
    for site in dict.fromkeys(p for p in sys.path if p and os.path.isdir(os.path.join(p, "nvidia"))):
        for pattern in ("nvidia/cu*/lib/libcudart.so*", "nvidia/cuda_runtime/lib/libcudart.so*"):
            candidates += sorted(glob.glob(os.path.join(site, pattern)), reverse=True)
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise MissingLibraryError(
        "the CUDA runtime library (libcudart) is not loadable: it is needed to run a TensorRT engine. Use the "
        "trtop converter or GPU server image (built on nvcr.io/nvidia/tensorrt), or install nvidia-cuda-runtime"
    )
