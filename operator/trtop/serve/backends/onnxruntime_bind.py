"""ONNX Runtime on a GPU with fixed buffers: IO binding per batch size, CUDA graphs, pinned host batches.

Without this, each ``session.run`` with numpy inputs allocates the GPU inputs and outputs,
copies from pageable host memory (staged by the driver) and launches every kernel from the
CPU one by one (ResNet-50: ~160 launches, most of a batch-1 run). Here each batch size gets
GPU buffers bound once (``io_binding``), a run copies the batch into them (from page-locked
memory when the batch was merged into a ``pinned`` buffer), and with ``cuda_graphs`` the
whole run is replayed as one CUDA graph (ONNX Runtime's ``enable_cuda_graph``: it needs
fixed shapes and addresses, which a bucket's session has).

``BoundPool`` holds ``slots`` bound sessions per batch size (a CUDA graph may be replayed by
one thread at a time; the scheduler runs at most ``slots`` batches at once) and checks
every one against the plain session on random data before it serves: a bucket whose bound
run differs or fails stays on the plain path (logged). Used by ``onnxruntime_impl``.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trtop.serve.types import Array, Feeds, Outputs

log = logging.getLogger(__name__)

CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-4  # a bound run must match the plain one this closely (same kernels)


class Bound:
    """One session whose inputs and outputs live in fixed device buffers."""

    def __init__(self, ort: Any, session: Any, inputs: Sequence[tuple[str, tuple[int, ...], str]],
                 outputs: Sequence[tuple[str, tuple[int, ...], str]], device: str, device_id: int) -> None:
        self.session = session
        self.on_host = device == "cpu"  # numpy() of a host buffer is a view of it, not a copy
        self.binding = session.io_binding()
        self.inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype), device, device_id)
                       for name, shape, dtype in inputs}
        self.outputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype), device, device_id)
                        for name, shape, dtype in outputs}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)

    def run(self, feeds: Feeds, names: Sequence[str]) -> Outputs:
        for name, value in self.inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))  # one copy into the bound buffer
        self.session.run_with_iobinding(self.binding)
        if self.on_host:
            return {name: self.outputs[name].numpy().copy() for name in names}
        return {name: self.outputs[name].numpy() for name in names}  # a copy from the GPU, the caller's own


class BoundPool:
    """Bound sessions per batch size, ``slots`` of them; ``run`` returns None when a size has none."""

    def __init__(self) -> None:
        self._free: dict[int, list[Bound]] = {}
        self._cond = threading.Condition()

    def __bool__(self) -> bool:
        return bool(self._free)

    def add(self, size: int, bound: list[Bound]) -> None:
        with self._cond:
            self._free[size] = bound

    def run(self, size: int, feeds: Feeds, names: Sequence[str]) -> Outputs | None:
        with self._cond:
            free = self._free.get(size)
            if free is None:
                return None
            while not free:
                self._cond.wait()
            bound = free.pop()
        try:
            return bound.run(feeds, names)
        finally:
            with self._cond:
                free.append(bound)
                self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._free.clear()


def build_bound(make_session: Callable[[bool], Any], ort: Any, plain: Any, size: int,
                specs: tuple[Sequence[tuple[str, tuple[int, ...], str]], Sequence[tuple[str, tuple[int, ...], str]]],
                *, slots: int, graphs: bool, device: str, device_id: int) -> list[Bound]:
    """``slots`` bound sessions for one batch size (graphs: one session each; else they share one),
    each checked against ``plain`` on the same random batch; raises when one fails or differs."""
    inputs, outputs = specs
    rng = np.random.default_rng(size)
    feeds = {name: _sample(rng, shape, dtype) for name, shape, dtype in inputs}
    names = [name for name, _, _ in outputs]
    expected = dict(zip(names, plain.run(names, feeds), strict=True))
    shared = None if graphs else make_session(False)
    result = []
    for _ in range(max(1, slots)):
        bound = Bound(ort, shared if shared is not None else make_session(graphs), inputs, outputs, device, device_id)
        for _ in range(3):  # ONNX Runtime captures the graph on an early run; replays after it
            got = bound.run(feeds, names)
        for name in names:
            if not np.allclose(got[name], expected[name], rtol=CHECK_RTOL, atol=CHECK_ATOL, equal_nan=True):
                raise ValueError(f"output {name!r} of the bound run differs from the plain run")
        result.append(bound)
    return result


def _sample(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> Array:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(dt)
    return np.zeros(shape, dtype=dt)  # ids, indices: zeros are valid for any vocabulary


class PinnedArrays:
    """Page-locked host arrays for merged batches (copies to the GPU from them run at full speed, without
    the driver's staging); np.empty where libcudart is not loadable. Freed by ``close``."""

    def __init__(self) -> None:
        self._buffers: list[Any] = []
        self._lock = threading.Lock()
        self._cuda: Any = None
        self._failed = False

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
        if not self._failed:
            try:
                from trtop.gpu.cuda import HostBuffer, default_cuda

                with self._lock:
                    if self._cuda is None:
                        self._cuda = default_cuda()
                    buffer = HostBuffer(self._cuda, shape, dtype)
                    self._buffers.append(buffer)
                return buffer.array
            except Exception as exc:  # no libcudart, or out of page-locked memory
                self._failed = True
                log.warning("merged batches use pageable memory (page-locked memory unavailable: %s)", exc)
        return np.empty(shape, dtype=dtype)

    def close(self) -> None:
        with self._lock:
            for buffer in self._buffers:
                buffer.free()
            self._buffers.clear()
