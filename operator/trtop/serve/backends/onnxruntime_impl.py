"""ONNX Runtime backend: CPU engines (dev, CI, CPU pools) and the CUDA provider where present.

Loaded by ``trtop.serve.runtime.load_runtime`` for ``backend == "onnxruntime"``.
"""
from __future__ import annotations

import logging
import mmap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from trtop.api.engine import TensorSpec
from trtop.serve.backends.onnxruntime_bind import (
    HANDOFF_S, BoundPool, PinnedArrays, Trial, build_bound, checked_here,
)
from trtop.serve.errors import StartupError
from trtop.serve.runtime import FixedIO, RuntimeOptions, default_threads
from trtop.serve.types import Feeds, Outputs

log = logging.getLogger(__name__)

WIDE_GAIN = 0.8  # a session over every core serves lone runs when it takes < this x the single-threaded time

# ONNX Runtime's type strings -> numpy dtype names.
_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


class OnnxRuntime(FixedIO):
    """An ``InferenceSession`` (one per batch bucket on a GPU); ``run`` is called from the scheduler's
    worker threads.

    On the CUDA provider every batch bucket gets its own session with the batch dimension fixed
    (``add_free_dimension_override_by_name``): a session whose input shape changes from run to
    run re-plans its convolutions each time (descriptors, workspace, algorithm lookup), and a
    fixed shape also lets the graph optimiser fold shape arithmetic. The weights are loaded once
    per bucket (ResNet-50: ~100 MB each), a small price on a GPU. On CPU one session serves every
    size (no per-shape tuning there, and memory is dearer).
    """

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        self._path = path
        self._options = options
        self._by_batch: dict[int, Any] = {}
        self._bound = BoundPool(options.slots, HANDOFF_S if options.handoff and options.use_gpu else 0.0)
        self._for_loop: tuple[Any, Trial, str] | None = None  # batch size 1's session for the event loop's thread
        self._pinned = PinnedArrays()
        self._wide: Any = None  # CPU: a session over every core for lone runs
        self._pin_failed = False
        self._session, self._providers = self._open(path, options)
        self._inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self._outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._batch_dims = {a.shape[0] for a in self._session.get_inputs() if a.shape}
        log.info("ONNX Runtime %s loaded %s with %s, %d threads",
                 ort.__version__, path, self._session.get_providers()[0], options.thread_count)

    @staticmethod
    def _open(path: Path, options: RuntimeOptions, batch: tuple[str, int] | None = None,
              graphs: bool = False, spin: bool = False) -> tuple[Any, list[str]]:
        so = ort.SessionOptions()
        # One batch runs at a time (the scheduler serialises them), so all cores go to intra-op
        # parallelism; inter-op threads would only compete with it.
        so.intra_op_num_threads = options.thread_count
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's pool threads spin between parallel sections by default; in a server they
        # would burn the cycles the event loop needs to read requests (measured on 2 cores:
        # 12.8 vs 8.7 CPU ms per MobileNetV2 image, 90 vs 203 img/s at 32 clients). Except in the
        # session for lone runs (``spin``), which only runs while nothing else does: without
        # spinning its threads sleep and wake at each of the model's parallel sections (MobileNetV2
        # at batch 1 over 2 threads: 6.7-9.4 ms, no faster than one thread's 8.8; spinning 5.1 ms).
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:  # but not after the run: the cores go back to the answer, the client and the next request
            so.add_session_config_entry("session.force_spinning_stop", "1")
        if batch is not None:
            so.add_free_dimension_override_by_name(*batch)
        providers: list[Any] = ["CPUExecutionProvider"]
        if options.use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            cuda = {"device_id": str(options.device_index)}
            if graphs:
                cuda["enable_cuda_graph"] = "1"
            providers.insert(0, ("CUDAExecutionProvider", cuda))
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=providers), providers
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise StartupError(f"ONNX Runtime could not load {path}: {exc}") from exc

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        """A fixed-batch session per bucket on the CUDA provider (see the class docstring); on CPU, a
        session over every core for runs that find the others idle, where it is faster."""
        if self._session.get_providers()[0] != "CUDAExecutionProvider":
            self._widen()
            return
        if len(self._batch_dims) != 1 or not isinstance(next(iter(self._batch_dims)), str):
            log.info("the inputs do not share one named batch dimension; one session serves every batch size")
            return
        name = str(next(iter(self._batch_dims)))
        for size in batch_sizes:
            self._by_batch[size], _ = self._open(self._path, self._options, (name, size))
        log.info("one CUDA session per batch size: %s", sorted(self._by_batch))
        if self._options.io_binding:
            self._bind(name, batch_sizes)

    def _bind(self, dim: str, batch_sizes: Sequence[int], device: str = "cuda") -> None:
        """Bound buffers (and CUDA graphs) per batch size where they work; the plain session elsewhere."""
        if any(d < 0 for s in (*self._inputs, *self._outputs) for d in s.shape[1:]):
            log.info("the model has dynamic dimensions beyond the batch; no bound buffers")
            return
        done: dict[int, str] = {}
        for size in batch_sizes:
            specs = ([(s.name, (size, *s.shape[1:]), s.dtype) for s in self._inputs],
                     [(s.name, (size, *s.shape[1:]), s.dtype) for s in self._outputs])
            trial = Trial(self._by_batch[size], size, specs)
            for graphs in ((True, False) if self._options.cuda_graphs else (False,)):
                def make(g: bool, size: int = size) -> Any:
                    return self._open(self._path, self._options, (dim, size), graphs=g)[0]
                try:
                    bound = build_bound(make, ort, trial, pool=self._bound, graphs=graphs, device=device,
                                        device_id=self._options.device_index)
                except Exception as exc:  # ORT's own error types; the plain session stays
                    log.warning("batch size %d: %s failed (%s)", size, "a CUDA graph" if graphs else "IO binding", exc)
                    continue
                self._bound.add(size, bound)
                done[size] = "CUDA graph" if graphs else "bound buffers"
                if size == 1 and self._options.loop_session:  # made here, captured by bind_on_loop on its thread
                    self._for_loop = (make(graphs), trial, device)
                break
        log.info("batch sizes on bound GPU buffers: %s", done or "none")

    def bind_on_loop(self) -> frozenset[int]:
        """Called on the event loop's thread once loaded: batch size 1 gets a bound session of that thread's own
        (captured there), so a lone request runs on the loop without the hops to a slot's thread and back
        (ResNet-50 on the H200 host: ~0.1-0.15 ms of a lone request's ~1.6 ms went to those hops and the GIL
        changing hands, ``bench/trace_lone.py``). Returns the sizes the loop can run itself."""
        if self._for_loop is None:
            return frozenset()
        session, trial, device = self._for_loop
        self._for_loop = None
        self._bound.claim_here()
        try:
            bound = checked_here(ort, session, trial, pool=self._bound, device=device,
                                 device_id=self._options.device_index)
        except Exception as exc:  # ORT's own error types: lone requests hop to a slot as before
            log.warning("no session on the event loop's thread for lone requests: %s", exc)
            return frozenset()
        self._bound.add_here(trial.size, bound)
        return self._bound.here_sizes

    @property
    def executor(self) -> Executor | None:
        """Where the scheduler should run batches: the bound sessions' slot threads (one hop per batch)."""
        return self._bound if self._bound else None

    @property
    def hands_off(self) -> bool:
        """The event loop hands the GIL to a slot's thread at each batch (``--slot-handoff``, bound sessions)."""
        return bool(self._bound) and self._bound.hands_off

    def _widen(self) -> None:
        """Several single-threaded runs side by side serve load best on CPU, but leave a lone request to
        one core: keep a session over every core for runs that start while no other runs, if it is
        faster at batch 1 (MobileNetV2 on 2 cores: 5.1 vs 8.8 ms; a tiny model gains nothing). Its
        threads spin between the model's parallel sections (``_open``): sleeping there, they were not
        faster than one thread, and lone runs stayed on one."""
        cores = default_threads()
        if self._options.slots < 2 or self._options.thread_count >= cores:
            return
        wide, _ = self._open(self._path, replace(self._options, threads=cores), spin=True)
        feeds = {s.name: np.zeros((1, *(d if d > 0 else 1 for d in s.shape[1:])), s.dtype) for s in self._inputs}
        names = [s.name for s in self._outputs]
        try:
            narrow_s, wide_s = _time_pair(self._session, wide, names, feeds)
        except Exception as exc:  # dynamic dimensions zeros cannot fill: stay with the narrow session
            log.info("no wide session: a trial run failed (%s)", exc)
            return
        if wide_s < WIDE_GAIN * narrow_s:
            self._wide = wide
            log.info("lone runs use %d threads (batch 1: %.2f vs %.2f ms)", cores, wide_s * 1e3, narrow_s * 1e3)
        else:  # said either way: a lone request's latency depends on it
            log.info("lone runs stay on 1 thread (batch 1 over %d threads: %.2f vs %.2f ms, not under %.0f%%)",
                     cores, wide_s * 1e3, narrow_s * 1e3, WIDE_GAIN * 100)

    def throughput(self, size: int, instances: int, runs: int = 2, min_seconds: float = 0.05,
                   apart: bool = False) -> float | None:
        """Rows per second at batch ``size`` with ``instances`` runs side by side, as the scheduler runs
        them under load (CPU only: the cores share caches and memory bandwidth, so one run alone
        would flatter large batches). None on the CUDA provider, where every bucket pays.
        ``apart``: a batch of ``size`` rows as ``size`` runs of one row (``batching.rows_apart``).

        Each thread runs at least ``runs`` times and ``min_seconds``, timed by itself once all
        have started (a barrier): thread start-up and a lone sub-millisecond run (a light model
        at batch 1) no longer decide the figure."""
        if self._by_batch:
            return None
        rows, turns = (1, size) if apart else (size, 1)
        feeds = {s.name: np.zeros((rows, *(d if d > 0 else 1 for d in s.shape[1:])), s.dtype) for s in self._inputs}
        names = [s.name for s in self._outputs]
        self._session.run(names, feeds)  # first-run allocations at this size stay out of the timing
        started = threading.Barrier(instances)

        def work(_: int) -> float:
            started.wait()
            begin, done = time.perf_counter(), 0
            while done < runs or time.perf_counter() - begin < min_seconds:
                for _ in range(turns):
                    self._session.run(names, feeds)
                done += 1
            return done * size / (time.perf_counter() - begin)

        with ThreadPoolExecutor(max_workers=instances) as pool:
            return sum(pool.map(work, range(instances)))

    def batch_array(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An array to merge a batch into: page-locked on the CUDA provider (faster copies to the GPU)."""
        if self._by_batch:
            return self._pinned.empty(shape, np.dtype(dtype))
        return np.empty(shape, dtype=dtype)

    def run_rows(self, parts: Sequence[Feeds], size: int, outputs: Sequence[str]) -> Outputs | None:
        """A batch of ``size`` rows copied to the GPU from each request where it lies (no merge on the host);
        None where that size has no bound session on this thread (the scheduler merges and calls ``run``)."""
        if not self._bound:
            return None
        return self._bound.run_rows(size, parts, list(outputs))

    def pin_host(self, address: int, nbytes: int) -> bool:
        """Page-lock host memory requests arrive in (a front-end's arena) so ``run_rows`` copies from it by
        DMA at full speed; only on the CUDA provider. False (logged once) where that fails: the copies then
        go through the driver's staging buffers, slower but the same bytes."""
        if not self._by_batch or self._pin_failed:
            return False
        try:
            from trtop.gpu.cuda import default_cuda

            page = mmap.PAGESIZE
            start = -(-address // page) * page  # only whole pages of the range
            size = (address + nbytes - start) // page * page
            default_cuda().register_host(start, size)
            log.info("page-locked %.0f MiB of request memory (batches are copied to the GPU from it)", size / 2**20)
            return True
        except Exception as exc:  # no libcudart, or the platform refuses to lock this memory
            self._pin_failed = True
            if self._bound:
                self._bound.stop_holding()
            log.warning("request memory stays pageable (copies to the GPU are staged by the driver): %s", exc)
            return False

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx"

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        names = list(outputs)
        session = self._session
        if self._by_batch:
            size = next(iter(feeds.values())).shape[0]
            if self._bound:
                bound = self._bound.run(size, feeds, names)
                if bound is not None:
                    return bound
            session = self._by_batch.get(size, session)
        values = session.run(names, dict(feeds))
        return dict(zip(names, values, strict=True))

    def run_alone(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        """A run the scheduler started with nothing else queued or running: on CPU over every core where
        that is faster (``_widen``). Only the scheduler can tell: a run counted alone by the runs in
        progress here (as before) took the wide session under load whenever the other instance was between
        batches, and its threads then spun on the cores the other run and the event loop needed (MobileNetV2
        at 64 connections on two cores: its pool thread took 0.25-0.36 CPU ms per image)."""
        if self._wide is None:
            return self.run(feeds, outputs)
        names = list(outputs)
        return dict(zip(names, self._wide.run(names, dict(feeds)), strict=True))

    def close(self) -> None:
        self._bound.close()
        self._by_batch.clear()
        self._pinned.close()
        del self._session


def _time_pair(first: Any, second: Any, names: list[str], feeds: dict[str, Any], runs: int = 9,
               min_runs: int = 3, budget_s: float = 2.0) -> tuple[float, float]:
    """The best seconds of a run of each session, their runs taken in turns after one warm-up run each
    (``runs`` pairs, fewer once ``budget_s`` has passed, never under ``min_runs``).

    In turns: a shared machine's speed moves within seconds, and timed one block after the other the two
    sessions met different machines. The best, not the median: on the development VM a second core comes
    and goes, and a session over both cores runs no faster than one thread while it is gone (5.0 against
    7.3-8.5 ms for MobileNetV2, spells longer than this measurement), so the median of a slow spell kept
    lone runs on one thread for good; the best run says what the cores can do."""
    times: tuple[list[float], list[float]] = ([], [])
    for session in (first, second):
        session.run(names, feeds)
    began = time.perf_counter()
    for i in range(runs):
        if i >= min_runs and time.perf_counter() - began > budget_s:
            break
        for session, kept in zip((first, second), times, strict=True):
            start = time.perf_counter()
            session.run(names, feeds)
            kept.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def _spec(arg: Any) -> TensorSpec:
    dtype = _DTYPES.get(str(arg.type))
    if dtype is None:
        raise StartupError(f"tensor {arg.name!r} has type {arg.type}, which the server does not support")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(str(arg.name), dtype, shape)
