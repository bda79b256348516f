"""One batch size (bucket) of a TensorRT engine: its execution context, buffers and CUDA graph.

Made by ``tensorrt.TensorRTEngine`` for each batch size it runs at. At creation the
context gets its optimization profile and fixed input shapes, every I/O tensor a device
buffer and a page-locked host buffer, and then one plain run (TensorRT finishes its
deferred set-up on the first enqueue) followed by a CUDA graph capture of copy-in,
enqueue, copy-out. A run then costs one ``np.copyto`` per input into pinned memory, one
graph launch and one copy per requested output; where capture fails (plugins or layers
that synchronise, data-dependent shapes) the bucket runs the same steps as plain
enqueues. Not thread-safe: the engine serialises runs (one stream, shared activation memory).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.gpu.cuda import Array, Cuda, HostBuffer
from trtop.gpu.errors import CudaError, EngineLoadError, EngineRunError, GpuError

if TYPE_CHECKING:
    import tensorrt as trt


class Bucket:
    def __init__(self, context: trt.IExecutionContext, *, batch: int, profile: int, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], cuda: Cuda, stream: int, graphs: bool) -> None:
        self.batch, self.profile = batch, profile
        self._context, self._cuda, self._stream = context, cuda, stream
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)
        self._device: dict[str, int] = {}
        self._host: dict[str, HostBuffer] = {}
        self._graph = self._graph_exec = 0
        self.capture_error = "" if graphs else "CUDA graphs are turned off"
        try:
            self._bind()
            self._enqueue([s.name for s in self._outputs])  # TensorRT's deferred set-up happens on the first run
            cuda.synchronize(stream)
            if graphs:
                self.capture_error = self._capture()
        except Exception:
            self.close()
            raise

    @property
    def graph(self) -> bool:
        """Whether runs launch a captured CUDA graph (else plain enqueues)."""
        return bool(self._graph_exec)

    def _bind(self) -> None:
        ctx = self._context
        if self.profile and not ctx.set_optimization_profile_async(self.profile, self._stream):
            raise EngineLoadError(f"TensorRT refused optimization profile {self.profile} for batch {self.batch}")
        for spec in self._inputs:
            shape = (self.batch, *spec.shape[1:]) if spec.shape[0] < 0 else spec.shape
            if not ctx.set_input_shape(spec.name, shape):
                raise EngineRunError(f"TensorRT refused input {spec.name!r} with shape {list(shape)} (outside "
                                     f"optimization profile {self.profile})")
            self._allocate(spec.name, shape, spec.dtype)
        for spec in self._outputs:
            dims = ctx.get_tensor_shape(spec.name)
            shape = tuple(int(dims[i]) for i in range(len(dims)))
            if any(d < 0 for d in shape):
                raise EngineLoadError(f"output {spec.name!r} has a data-dependent shape {list(shape)}; trtop's "
                                      "TensorRT runtime needs output shapes known from the input shapes")
            self._allocate(spec.name, shape, spec.dtype)

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        host = HostBuffer(self._cuda, shape, np.dtype(dtype))
        host.array[...] = 0  # the set-up run and the capture read it: no garbage (NaNs) in them
        self._host[name] = host
        self._device[name] = self._cuda.alloc(host.nbytes)
        if not self._context.set_tensor_address(name, self._device[name]):
            raise EngineLoadError(f"TensorRT refused the device address of tensor {name!r}")

    def _enqueue(self, outputs: Sequence[str]) -> None:
        cuda, stream = self._cuda, self._stream
        for spec in self._inputs:
            host = self._host[spec.name]
            cuda.copy_to_device(self._device[spec.name], host.ptr, host.nbytes, stream)
        if not self._context.execute_async_v3(stream):
            raise EngineRunError(f"TensorRT execute_async_v3 failed at batch {self.batch} (see the TensorRT log)")
        for name in outputs:
            host = self._host[name]
            cuda.copy_to_host(host.ptr, self._device[name], host.nbytes, stream)

    def _capture(self) -> str:
        """Capture copy-in, enqueue and copy-out as one CUDA graph; the reason it failed, or ""."""
        cuda, stream = self._cuda, self._stream
        try:
            cuda.begin_capture(stream)
        except CudaError as exc:
            cuda.clear_error()
            return str(exc)
        reason = ""
        try:
            self._enqueue([s.name for s in self._outputs])
        except GpuError as exc:
            reason = str(exc)
        try:
            graph = cuda.end_capture(stream)
        except CudaError as exc:
            cuda.clear_error()
            return reason or str(exc)
        if reason:
            cuda.destroy_graph(graph)
            cuda.clear_error()
            return reason
        try:
            self._graph_exec = cuda.instantiate(graph)
            cuda.launch(self._graph_exec, stream)  # one replay now: a broken graph fails here, not on a request
            cuda.synchronize(stream)
        except CudaError as exc:
            if self._graph_exec:
                cuda.destroy_graph_exec(self._graph_exec)
                self._graph_exec = 0
            cuda.destroy_graph(graph)
            cuda.clear_error()
            return str(exc)
        self._graph = graph
        return ""

    def run(self, parts: Sequence[Mapping[str, Array]], rows: int, outputs: Sequence[str]) -> dict[str, Array]:
        """``parts`` (requests) stacked into ``rows`` <= ``batch`` rows of pinned memory, each copied once;
        rows past them are zeros and cut from the outputs."""
        for spec in self._inputs:
            staged = self._host[spec.name].array
            start = 0
            for part in parts:
                value = np.asarray(part[spec.name])
                if value.shape[1:] != staged.shape[1:] or start + value.shape[0] > rows:
                    raise EngineRunError(f"input {spec.name!r} has shape {list(value.shape)}; the engine takes "
                                         f"[{rows}, {', '.join(map(str, staged.shape[1:]))}] in all")
                np.copyto(staged[start:start + value.shape[0]], value, casting="same_kind")
                start += value.shape[0]
            if start != rows:
                raise EngineRunError(f"input {spec.name!r} has {start} rows, the other inputs {rows}")
            if rows < self.batch:
                staged[rows:] = 0
        if self._graph_exec:
            self._cuda.launch(self._graph_exec, self._stream)
        else:
            self._enqueue(outputs)
        self._cuda.synchronize(self._stream)
        return {name: self._result(name, rows) for name in outputs}

    def _result(self, name: str, rows: int) -> Array:
        out = self._host[name].array
        batched = out.ndim > 0 and out.shape[0] == self.batch
        result: Array = out[:rows].copy() if batched else out.copy()  # the pinned buffer is reused
        return result

    def close(self) -> None:
        """Free everything this bucket holds; safe to call twice and after a failed creation."""
        cuda = self._cuda
        if self._graph_exec:
            cuda.destroy_graph_exec(self._graph_exec)
        if self._graph:
            cuda.destroy_graph(self._graph)
        self._graph = self._graph_exec = 0
        for ptr in self._device.values():
            cuda.free(ptr)
        for host in self._host.values():
            host.free()
        self._device.clear()
        self._host.clear()

    def describe(self) -> dict[str, Any]:
        return {"batch": self.batch, "profile": self.profile, "cuda_graph": self.graph,
                **({"capture_error": self.capture_error} if self.capture_error else {})}
