"""ONNX Runtime on a GPU with fixed buffers: IO binding per batch size, CUDA graphs, pinned host batches.

Without this, each ``session.run`` with numpy inputs allocates the GPU inputs and outputs,
copies from pageable host memory (staged by the driver) and launches every kernel from the
CPU one by one (ResNet-50: ~160 launches, most of a batch-1 run). Here each batch size gets
GPU buffers bound once (``io_binding``), a run copies the batch into them (from page-locked
memory when the batch was merged into a ``pinned`` buffer; through libcudart on the slot's
own stream, without holding the GIL: ``DeviceCopier``), and with ``cuda_graphs`` the
whole run is replayed as one CUDA graph (ONNX Runtime's ``enable_cuda_graph``: it needs
fixed shapes and addresses, which a bucket's session has).

A batch of several large requests is not merged on the host first: ``run_rows`` copies each
request's rows from where it lies (a front-end's page-locked arena) into its place in the bound
buffer (``DeviceCopier.copy_rows``).

``BoundPool`` holds a bound session per batch size and slot, each slot one thread of its own
(ONNX Runtime's CUDA graphs belong to a thread; the scheduler runs at most ``slots`` batches
at once), plus batch 1's session of the engine's event loop thread (``add_here``: a lone request
runs there, without a hop), and every one is checked against the plain session on random data
before it serves (``Trial``): a bucket whose bound run differs or fails stays on the plain path (logged). Used by
``onnxruntime_impl``.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from trtop.serve.batching import merge
from trtop.serve.types import Array, Feeds, Outputs

log = logging.getLogger(__name__)

T = TypeVar("T")
CHECK_RTOL, CHECK_ATOL = 1e-3, 1e-4  # a bound run must match the plain one this closely (same kernels)
GATHER_MIN_BYTES = 64 * 1024  # per request, on average, for a batch to be copied to the GPU request by request
# ``--slot-handoff``: the event loop waits at most this long, after handing a batch to a slot, for the slot's thread
# to reach its copies or its run (``BoundPool.submit``; ``runtime.HANDOFF_SWITCH_S`` goes with it)
HANDOFF_S = 0.001
# ``--slot-handoff``: the largest copy queued holding the GIL. From page-locked memory (the front-ends' arenas) a copy
# is only queued, at any size; from pageable memory (a merged batch, a request decoded from JSON) the driver stages
# it first, ~0.1 ms a MiB with the event loop and the other slots locked out, so a larger copy lets go of the GIL.
HELD_COPY_MAX_BYTES = 1 << 20


class DeviceCopier:
    """Host -> GPU copies of a slot's batches through libcudart, on a stream of the slot's own.

    ONNX Runtime's ``OrtValue.update_inplace`` copies while holding the GIL (its binding does
    not release it): a 19 MB batch (ResNet-50 at 32) blocks the engine's event loop and the
    other slot for the whole copy. A ctypes call releases the GIL, so here the copy runs beside
    them. The first failure (no libcudart) turns the copier off; the caller then uses
    ``update_inplace`` (logged once)."""

    def __init__(self, device_id: int, cuda: Any = None, held: bool = False) -> None:
        self._device_id = device_id
        self._cuda = cuda
        self._stream: int | None = None
        self.failed = False
        self.held = held  # queue the copies holding the GIL (``Cuda.queue_copy_to_device``, --slot-handoff)

    def _queue(self, dst: int, src: int, nbytes: int) -> None:
        if self.held and nbytes <= HELD_COPY_MAX_BYTES:
            self._cuda.queue_copy_to_device(dst, src, nbytes, self._stream)
        else:
            self._cuda.copy_to_device(dst, src, nbytes, self._stream)

    def copy(self, dst: int, array: Array) -> bool:
        """``array`` (C-contiguous) into device memory at ``dst``, finished on return; False when it cannot."""
        if self.failed:
            return False
        try:
            self._ensure()
            self._queue(dst, int(array.ctypes.data), array.nbytes)
            self._cuda.synchronize(self._stream)
            return True
        except Exception as exc:  # no libcudart, or a CUDA error: ONNX Runtime's own copy still works
            self.failed = True
            log.warning("copies to the GPU go through ONNX Runtime's update_inplace (holding the GIL): %s", exc)
            return False

    def copy_rows(self, dst: int, parts: Sequence[Array], rows: int) -> bool:
        """The requests' rows (C-contiguous arrays of one row shape) one after another into device memory at
        ``dst``, then the last row again up to ``rows`` (padding); finished on return; False when it cannot.

        Queued as one copy per request on the slot's stream and waited for once: with the requests in
        page-locked memory (the front-ends' arenas, ``OnnxRuntime.pin_host``), the DMA reads them where they
        are and the batch is never merged on the host (merging ResNet-50's 602 KB images took ~27% of a
        slot's busy time at 64 clients on the H200 host, with the GPU idle meanwhile)."""
        if self.failed:
            return False
        try:
            self._ensure()
            offset, last, row_bytes = 0, parts[-1], parts[-1].nbytes // max(1, parts[-1].shape[0])
            for part in parts:
                self._queue(dst + offset, int(part.ctypes.data), part.nbytes)
                offset += part.nbytes
            pad_from = int(last.ctypes.data) + last.nbytes - row_bytes
            while offset < rows * row_bytes:
                self._queue(dst + offset, pad_from, row_bytes)
                offset += row_bytes
            self._cuda.synchronize(self._stream)
            return True
        except Exception as exc:  # a CUDA error: the caller merges on the host and copies that
            self.failed = True
            log.warning("batches are merged on the host before the copy to the GPU: %s", exc)
            return False

    def _ensure(self) -> None:
        if self._stream is None:
            if self._cuda is None:
                from trtop.gpu.cuda import default_cuda

                self._cuda = default_cuda()
            self._cuda.set_device(self._device_id)
            self._stream = self._cuda.new_stream()

    def close(self) -> None:
        if self._stream is not None and self._cuda is not None:
            try:
                self._cuda.destroy_stream(self._stream)
            except Exception:  # the process is ending; nothing to do about it
                pass
            self._stream = None


class Bound:
    """One session whose inputs and outputs live in fixed device buffers."""

    def __init__(self, ort: Any, session: Any, inputs: Sequence[tuple[str, tuple[int, ...], str]],
                 outputs: Sequence[tuple[str, tuple[int, ...], str]], device: str, device_id: int,
                 copier: DeviceCopier | None = None) -> None:
        self.session = session
        self.on_host = device == "cpu"  # numpy() of a host buffer is a view of it, not a copy
        self._copier = None if self.on_host else copier
        self.binding = session.io_binding()
        self.rows = inputs[0][1][0]  # the batch size this session is fixed at
        self.inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype), device, device_id)
                       for name, shape, dtype in inputs}
        self.outputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype), device, device_id)
                        for name, shape, dtype in outputs}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        for name, value in self.outputs.items():
            self.binding.bind_ortvalue_output(name, value)
        self._pointers = {name: int(value.data_ptr()) for name, value in self.inputs.items()} if self._copier else {}

    @property
    def gathers(self) -> bool:
        """Rows can be copied to the device from each request where it lies (``run_rows``)."""
        return self._copier is not None and not self._copier.failed

    def run(self, feeds: Feeds, names: Sequence[str]) -> Outputs:
        _reached()
        for name, value in self.inputs.items():
            array = np.ascontiguousarray(feeds[name])
            if self._copier is None or not self._copier.copy(self._pointers[name], array):
                value.update_inplace(array)  # one copy into the bound buffer
        return self._run(names)

    def run_rows(self, parts: Sequence[Feeds], names: Sequence[str]) -> Outputs:
        """One batch from the requests' own arrays (no merged copy on the host); rows past theirs repeat
        the last one, like ``batching.merge``."""
        _reached()
        for name, value in self.inputs.items():
            arrays = [np.ascontiguousarray(p[name]) for p in parts]
            if self._copier is None or not self._copier.copy_rows(self._pointers[name], arrays, self.rows):
                value.update_inplace(merge([{name: a} for a in arrays], self.rows)[name])
        return self._run(names)

    def _run(self, names: Sequence[str]) -> Outputs:
        self.session.run_with_iobinding(self.binding)
        if self.on_host:
            return {name: self.outputs[name].numpy().copy() for name in names}
        return {name: self.outputs[name].numpy() for name in names}  # a copy from the GPU, the caller's own


_slot = threading.local()  # .index (and .reached, where the pool hands off) on a slot's own thread
_HERE = -2  # the copier key of the thread that claimed sessions of its own (the event loop's)


def _enter_slot(index: int, reached: threading.Event | None = None) -> None:
    _slot.index = index
    _slot.reached = reached


def _reached() -> None:
    """A slot's thread has reached its copies or its run: the event loop that waits for it goes on
    (``BoundPool.submit`` with a handoff)."""
    reached: threading.Event | None = getattr(_slot, "reached", None)
    if reached is not None:
        reached.set()


class BoundPool(Executor):
    """Bound sessions per batch size, one per slot; ``run`` returns None when a size has none.

    ONNX Runtime keeps a CUDA graph per session *and thread* (its CUDA provider's per-thread
    context): run from a new thread, a session captures again, and a capture while another
    thread uses the GPU fails (``operation not permitted when stream is capturing``). So each
    slot is one thread of its own: its sessions are captured there at start-up, one at a time,
    and only ever run there. The pool is also the scheduler's executor (``submit`` runs a whole
    batch on a free slot's thread, so merge, copy and run take one hop); a run from any other
    thread is handed to a free slot."""

    def __init__(self, slots: int, handoff_s: float = 0.0) -> None:
        self.slots = max(1, slots)
        # --slot-handoff: per slot, set by its thread once it reaches its copies or its run (``_reached``)
        self.handoff_s = handoff_s
        self._reached = [threading.Event() for _ in range(self.slots)]
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix=f"trtop-gpu-slot-{i}", initializer=_enter_slot,
                                            initargs=(i, self._reached[i] if handoff_s > 0 else None))
                         for i in range(self.slots)]
        self._bound: dict[int, list[Bound]] = {}
        self._copiers: dict[int, DeviceCopier] = {}  # slot -> its copier (made on the slot's thread)
        self._hold_copies = True  # handing off, copies are queued holding the GIL (``stop_holding``)
        self._free = list(range(self.slots))
        self._cond = threading.Condition()
        # Batch size -> a session bound and captured on the engine's event loop thread (``add_here``): a lone
        # request runs there without the two hops to a slot's thread and back.
        self._here: dict[int, Bound] = {}
        self._here_thread: int | None = None

    def __bool__(self) -> bool:
        return bool(self._bound)

    def add(self, size: int, bound: list[Bound]) -> None:
        self._bound[size] = bound

    def copier(self, device_id: int) -> DeviceCopier:
        """The calling slot thread's copier (one stream per slot, shared by its buckets; the event loop's
        thread has one of its own)."""
        slot: int = getattr(_slot, "index", _HERE if threading.get_ident() == self._here_thread else -1)
        if slot not in self._copiers:
            self._copiers[slot] = DeviceCopier(device_id, held=self.hands_off and self._hold_copies)
        return self._copiers[slot]

    def stop_holding(self) -> None:
        """Copies let go of the GIL again: request memory stayed pageable (``OnnxRuntime.pin_host`` failed), where
        the driver stages each copy before it returns, and a copy queued holding the GIL would lock the event loop
        and the other slots out meanwhile (a ResNet-50 image, 602 KB, is under the held limit)."""
        self._hold_copies = False
        for copier in list(self._copiers.values()):
            copier.held = False

    def claim_here(self) -> None:
        """The calling thread (the engine's event loop) will hold sessions of its own (``add_here``)."""
        self._here_thread = threading.get_ident()

    def add_here(self, size: int, bound: Bound) -> None:
        """A session bound (and captured) on the claiming thread; ``run`` from that thread uses it."""
        self._here[size] = bound

    @property
    def here_sizes(self) -> frozenset[int]:
        """Batch sizes the claiming thread can run itself."""
        return frozenset(self._here)

    def in_slot(self, slot: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the slot's own thread."""
        return self._threads[slot].submit(fn, *args).result()

    def _take(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop()

    def _give(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    @property
    def hands_off(self) -> bool:
        """The caller of ``submit`` waits for the slot's thread to reach its copies (``--slot-handoff``)."""
        return self.handoff_s > 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` on a free slot's thread (the scheduler runs at most ``slots`` batches at once).

        Handing off, the caller (the event loop) then waits, at most ``handoff_s``, for that thread to reach its
        copies or its run, or to end: it lets go of the GIL meanwhile, so the thread gets it at once instead of
        asking a loop that answers a landed batch and reads descriptors (608 us at the median on an H100 at 64
        clients, 63-83 us handing off; thirty-eighth session)."""
        slot = self._take()
        reached = self._reached[slot]
        if self.hands_off:
            reached.clear()
        future = self._threads[slot].submit(fn, *args, **kwargs)
        future.add_done_callback(lambda _: self._give(slot))
        if self.hands_off:
            future.add_done_callback(lambda _: reached.set())
            reached.wait(self.handoff_s)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The threads stay until ``close`` (the runtime still runs after the scheduler stops)."""

    def run(self, size: int, feeds: Feeds, names: Sequence[str]) -> Outputs | None:
        bound = self._bound.get(size)
        if bound is None:
            return None
        here: int | None = getattr(_slot, "index", None)
        if here is not None:
            return bound[here].run(feeds, names)  # already on a slot's thread (holding that slot)
        if (own := self._here.get(size)) is not None and threading.get_ident() == self._here_thread:
            return own.run(feeds, names)  # the event loop's own session (a lone request, no hop)
        slot = self._take()
        try:
            return self.in_slot(slot, bound[slot].run, feeds, names)
        finally:
            self._give(slot)

    def run_rows(self, size: int, parts: Sequence[Feeds], names: Sequence[str]) -> Outputs | None:
        """A batch of ``size`` rows straight from the requests' arrays; None when the size has no bound
        session that copies that way (the caller merges them and calls ``run``)."""
        bound = self._bound.get(size)
        here: int | None = getattr(_slot, "index", None)
        if bound is None or here is None or not bound[here].gathers:
            return None
        if sum(a.nbytes for p in parts for a in p.values()) < GATHER_MIN_BYTES * len(parts):
            return None  # small requests: one merge on the host and one copy cost less than a copy per request
        return bound[here].run_rows(parts, names)

    def close(self) -> None:
        self._bound.clear()
        self._here.clear()
        for slot, copier in self._copiers.items():
            if slot in range(self.slots):
                self.in_slot(slot, copier.close)
            else:
                copier.close()
        self._copiers.clear()
        for thread in self._threads:
            thread.shutdown(wait=True)


class Trial:
    """A random batch of one size and the plain session's answer to it: a bound session must give the same
    (after its first runs, which capture its CUDA graph on the calling thread) before it serves."""

    def __init__(self, plain: Any, size: int,
                 specs: tuple[Sequence[tuple[str, tuple[int, ...], str]], Sequence[tuple[str, tuple[int, ...], str]]]
                 ) -> None:
        inputs, outputs = specs
        self.size, self.specs = size, specs
        rng = np.random.default_rng(size)
        self.feeds = {name: _sample(rng, shape, dtype) for name, shape, dtype in inputs}
        self.names = [name for name, _, _ in outputs]
        self.expected = dict(zip(self.names, plain.run(self.names, self.feeds), strict=True))

    def check(self, bound: Bound) -> Bound:
        """``bound`` run (captured) on the calling thread and checked; raises when it differs or fails."""
        for _ in range(3):  # ONNX Runtime captures the graph on an early run; replays after it
            got = bound.run(self.feeds, self.names)
        _check(got, self.expected, "the bound run")
        if self.size > 1 and bound.gathers:  # the batch copied to the device request by request
            feeds = self.feeds
            _check(bound.run_rows([{k: v[:1] for k, v in feeds.items()}, {k: v[1:] for k, v in feeds.items()}],
                                  self.names), self.expected, "the bound run from separate requests")
        return bound


def build_bound(make_session: Callable[[bool], Any], ort: Any, trial: Trial, *, pool: BoundPool, graphs: bool,
                device: str, device_id: int) -> list[Bound]:
    """A bound session per slot for one batch size, made, captured and checked (``trial``) on the slot's
    thread; without graphs the slots share one session. Raises when one fails or differs."""
    shared = None if graphs else make_session(False)

    def one() -> Bound:
        return checked_here(ort, shared if shared is not None else make_session(graphs), trial, pool=pool,
                            device=device, device_id=device_id)

    return [pool.in_slot(slot, one) for slot in range(pool.slots)]


def checked_here(ort: Any, session: Any, trial: Trial, *, pool: BoundPool, device: str, device_id: int) -> Bound:
    """``session`` bound with the calling thread's copier, captured and checked (``trial``) on this thread."""
    return trial.check(Bound(ort, session, *trial.specs, device, device_id,
                             pool.copier(device_id) if device != "cpu" else None))


def _check(got: Outputs, expected: Outputs, what: str) -> None:
    for name, value in expected.items():
        if not np.allclose(got[name], value, rtol=CHECK_RTOL, atol=CHECK_ATOL, equal_nan=True):
            raise ValueError(f"output {name!r} of {what} differs from the plain run")


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
