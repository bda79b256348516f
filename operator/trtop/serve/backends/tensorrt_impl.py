"""TensorRT backend: deserialize one engine plan and run it with ``execute_async_v3``.

Loaded by ``trtop.serve.runtime.load_runtime`` for ``backend == "tensorrt"`` (TensorRT 10+
API: I/O by tensor name). Device memory goes through ``cuda_memory.DeviceMemory`` so
the tests can run this module with a fake ``tensorrt`` and a fake CUDA. TensorRT cannot
run on the machines this project is developed on: this code is checked by those fakes
and by ``tensorrt-stubs`` (mypy), not by a real GPU run.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt

from trtop.api.engine import TensorSpec
from trtop.serve.backends.cuda_memory import CudaRuntime, DeviceMemory
from trtop.serve.errors import InferenceFailed, StartupError
from trtop.serve.runtime import FixedIO, RuntimeOptions
from trtop.serve.types import Array, Feeds, Outputs

log = logging.getLogger(__name__)


class _Logger(trt.ILogger):  # type: ignore[misc,unused-ignore]  # Any without usable stubs
    """Forwards TensorRT's log to ``logging`` and keeps errors to explain a failed load."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: list[str] = []

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
            self.errors.append(msg)
            log.error("TensorRT: %s", msg)
        elif severity == trt.ILogger.Severity.WARNING:
            log.warning("TensorRT: %s", msg)


class TensorRTRuntime(FixedIO):
    """One engine, one execution context, one CUDA stream; buffers grow to the largest batch seen."""

    def __init__(self, path: Path, options: RuntimeOptions, cuda: DeviceMemory | None = None) -> None:
        self._cuda = cuda if cuda is not None else CudaRuntime()
        self._cuda.set_device(options.device_index)
        self._logger = _Logger()
        self._trt_runtime = trt.Runtime(self._logger)
        engine = self._trt_runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            reason = "; ".join(self._logger.errors) or "no reason logged"
            raise StartupError(
                f"TensorRT {trt.__version__} could not load the engine {path}: {reason}. An engine runs only "
                "on the GPU architecture and TensorRT version it was built with: rebuild it for this node "
                "(the operator does this when the node's target is in spec.engine.targets)"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = self._cuda.new_stream()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._lock = threading.Lock()  # one context and one set of buffers: one batch at a time
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        self._max_batch: int | None = None
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(name, _numpy_dtype(engine.get_tensor_dtype(name)), _dims(engine.get_tensor_shape(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
                if spec.shape and spec.shape[0] < 0:  # dynamic batch: the profile's max bounds it
                    profile_max = _dims(engine.get_tensor_profile_shape(name, 0)[2])
                    self._max_batch = min(self._max_batch or 1 << 30, profile_max[0])
                elif spec.shape:
                    self._max_batch = min(self._max_batch or 1 << 30, spec.shape[0])
            else:
                outputs.append(spec)
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)
        log.info("TensorRT %s loaded %s (max batch %s)", trt.__version__, path, self._max_batch)

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    @property
    def platform(self) -> str:
        return "tensorrt_plan"

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        with self._lock:
            return self._run(feeds, outputs)

    def _run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        ctx, cuda, stream = self._context, self._cuda, self._stream
        for name, value in feeds.items():
            host = np.ascontiguousarray(value)
            if not ctx.set_input_shape(name, host.shape):
                raise InferenceFailed(f"TensorRT refused input {name!r} with shape {host.shape} (outside the engine's profile)")
            ptr = self._buffer(name, host.nbytes)
            cuda.to_device(ptr, host, stream)
            ctx.set_tensor_address(name, ptr)
        results: dict[str, tuple[Array, int]] = {}
        for spec in self._outputs:  # every output needs an address, requested or not
            host = np.empty(_dims(ctx.get_tensor_shape(spec.name)), dtype=spec.dtype)
            ptr = self._buffer(spec.name, host.nbytes)
            ctx.set_tensor_address(spec.name, ptr)
            results[spec.name] = (host, ptr)
        if not ctx.execute_async_v3(stream):
            raise InferenceFailed("TensorRT execute_async_v3 failed; see the server log for TensorRT's reason")
        for name in outputs:
            host, ptr = results[name]
            cuda.to_host(host, ptr, stream)
        cuda.synchronize(stream)
        return {name: results[name][0] for name in outputs}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cuda.free(ptr)
            ptr, size = self._cuda.alloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cuda.free(ptr)
        self._buffers.clear()
        del self._context, self._engine


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    # Dims supports len() and indexing (its stubs do not declare iteration).
    return tuple(int(dims[i]) for i in range(len(dims)))


def _numpy_dtype(dtype: trt.DataType) -> str:
    nptype: Any = trt.nptype  # untyped in tensorrt-stubs
    return str(np.dtype(nptype(dtype)).name)
