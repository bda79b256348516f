"""One served model: load + warm up in the background, then admit and infer through the scheduler.

The app's only handle on the data plane. States: ``loading`` -> ``ready`` -> ``draining``
(SIGTERM: not ready, still serving) -> ``stopped``; ``failed`` when loading raised.
Called by ``app`` (infer, metadata, readiness) and ``server`` (start, drain, close).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from trtop.api.engine import EngineRecord, batch_buckets
from trtop.serve.awake import KeepAwake
from trtop.serve.batching import MERGE_FLOOR, BatchPolicy, RowsJudge, paying_batch, rows_apart
from trtop.serve.errors import NotReady, ServeError
from trtop.serve.handle import not_ready_message
from trtop.serve.metrics import ServerMetrics
from trtop.serve.model import Admitted, ModelInfo, admit
from trtop.serve.protocol import InferRequest
from trtop.serve.runtime import HANDOFF_SWITCH_S, Runtime
from trtop.serve.scheduler import Scheduler
from trtop.serve.shared_memory import RegionSpec, Registry
from trtop.serve.statistics import ModelStatistics, StatsSnapshot
from trtop.serve.types import Array, Feeds, Outputs

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32  # a raw model with a dynamic batch and no engine record to say otherwise

State = Literal["loading", "ready", "draining", "failed", "stopped"]


@dataclass(frozen=True)
class Loaded:
    """What the loader hands the service: the runtime and where it came from."""

    runtime: Runtime
    record: EngineRecord | None = None
    backend: str = ""
    key: str = ""
    target: str = ""


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 0  # 0: from the engine
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 256
    timeout_s: float = 30.0
    instances: int = 1  # batches that may run at once
    buckets: tuple[int, ...] | None = None  # None: the engine record's, else powers of two; (): every size


def choose_buckets(configured: tuple[int, ...] | None, record: EngineRecord | None, max_batch: int) -> tuple[int, ...]:
    """The batch sizes this server runs: the setting, else the engine's own, else powers of two."""
    if configured is not None:
        return batch_buckets(max_batch, configured) if configured else tuple(range(1, max_batch + 1))
    return batch_buckets(max_batch, record.buckets if record is not None else ())


def effective_max_batch(configured: int, record: EngineRecord | None, runtime_max: int | None) -> int:
    """Rows per batch: the setting, else the engine's batch.max, else the model's own limit, else 32;
    never above what the model accepts (a TensorRT profile's max or a fixed first dimension)."""
    value = configured or (record.batch.max if record is not None else 0) or runtime_max or DEFAULT_MAX_BATCH
    if runtime_max is not None and value > runtime_max:
        log.warning("max batch %d is above what the model accepts (%d); using %d", value, runtime_max, runtime_max)
        value = runtime_max
    return value


def warm(rt: Runtime, info: ModelInfo) -> None:
    """Run every bucket once before readiness: first-run allocations, kernel and algorithm choice
    happen here, not on a user's request (ONNX Runtime's CUDA provider tunes per new shape)."""
    names = info.output_names
    for rows in info.buckets:
        try:
            rt.run(warmup_feeds(info, rows), names)
        except Exception as exc:
            if all(d > 0 for s in info.inputs for d in s.shape[1:]):
                raise
            log.warning("warm-up at batch %d failed (the model has dynamic dimensions that were set to 1): %s",
                        rows, exc)


def time_lone_run(rt: Runtime, info: ModelInfo, runs: int = 3) -> float | None:
    """The best of ``runs`` batch-1 runs after warm-up, seconds (None: batch 1 is not a bucket, or the
    model's dynamic dimensions make zeros fail): whether keeping the cores awake pays (awake.py)."""
    if 1 not in info.buckets:
        return None
    feeds, names = warmup_feeds(info, 1), info.output_names
    best = math.inf
    try:
        for _ in range(runs):
            start = time.perf_counter()
            rt.run(feeds, names)
            best = min(best, time.perf_counter() - start)
    except Exception:  # warm() logged why already
        return None
    return best


APART_PAIRS = 3  # turns of merged and row-by-row runs at the merge cap
TURN_S = 0.15  # each at least this long: at 0.05 s MobileNetV2's cap of 4 came out merged in 2 of 4 starts


def measure_merge_max(rt: Runtime, info: ModelInfo, instances: int) -> tuple[int, RowsJudge | None]:
    """The most rows a merged batch should take (0: every bucket pays), from each bucket's throughput
    with ``instances`` runs side by side, where the runtime can measure it (CPU; see ``paying_batch``),
    and whether such a batch runs its rows one at a time (``rows_apart``): the judge of that, which serving
    keeps judging (None where no cap over one row was measured).
    Stops once two sizes in a row do not pay: larger ones only cost start-up time.

    The sizes measured are measured again in a second pass and each keeps its better figure:
    what disturbs a measurement (another process, a slow start) only ever slows it, and on
    the H200 host's two cores one pass chose caps of 1, 4 and 16 for the same model in three
    runs, with 0.79-0.98 of the in-process best to show for it."""
    measure = getattr(rt, "throughput", None)
    if measure is None or len(info.buckets) < 2:
        return 0, None
    first = measure(info.buckets[0], instances)  # None: the runtime cannot tell (a GPU: every bucket pays)
    if first is None:
        return 0, None
    rates: dict[int, float] = {info.buckets[0]: first}
    for size in info.buckets[1:]:
        rates[size] = measure(size, instances)
        if len(rates) >= 3 and paying_batch(rates, floor=MERGE_FLOOR) < sorted(rates)[-2]:
            break
    for size in sorted(rates):
        rates[size] = max(rates[size], measure(size, instances))
    chosen = paying_batch(rates, floor=MERGE_FLOOR)
    apart, turns = False, ""
    if chosen > 1:  # the cap's batches merged or row by row, in turns (the machine's speed moves)
        pairs = [(measure(chosen, instances, min_seconds=TURN_S),
                  measure(chosen, instances, apart=True, min_seconds=TURN_S)) for _ in range(APART_PAIRS)]
        apart = rows_apart([m for m, _ in pairs], [a for _, a in pairs])
        turns = "; at %d merged / row by row: %s: %s" % (
            chosen, ", ".join(f"{m:.0f}/{a:.0f}" for m, a in pairs), "rows apart" if apart else "merged")
    log.info("rows per second with %d runs side by side: %s; merged batches stop at %d rows%s",
             instances, ", ".join(f"{k}: {v:.0f}" for k, v in sorted(rates.items())), chosen, turns)
    judge = RowsJudge(chosen, apart, neighbours=instances - 1) if chosen > 1 else None
    return (0 if chosen == info.max_batch else chosen), judge


def warmup_feeds(info: ModelInfo, rows: int) -> dict[str, Array]:
    """Zeros of every input at ``rows`` rows (dynamic dims beyond the batch as 1)."""
    return {s.name: np.zeros((rows, *(d if d > 0 else 1 for d in s.shape[1:])), dtype=s.dtype) for s in info.inputs}


class _Observer:
    """The scheduler's batch callbacks, to the Prometheus metrics and the statistics extension."""

    def __init__(self, metrics: ServerMetrics, statistics: ModelStatistics) -> None:
        self.metrics = metrics
        self.statistics = statistics

    def dequeued(self, waited_s: float) -> None:
        self.metrics.dequeued(waited_s)

    def batch_done(self, rows: int, compute_s: float) -> None:
        self.metrics.batch_done(rows, compute_s)
        self.statistics.record_batch(rows, int(compute_s * 1e9))


class InferenceService:
    def __init__(self, name: str, loader: Callable[[], Loaded], config: BatchingConfig, metrics: ServerMetrics,
                 awake: KeepAwake | None = None, shared_memory: Registry | None = None) -> None:
        self.name = name
        # System shared memory regions clients registered (with front-ends: the registry they all follow).
        self.shared_memory = shared_memory if shared_memory is not None else Registry(enabled=False)
        self._awake = awake  # spinners that keep the cores from halting while requests come
        self._loader = loader
        self.config = config
        self.metrics = metrics
        self.statistics = ModelStatistics()
        self._observer = _Observer(metrics, self.statistics)
        self.state: State = "loading"
        self.error = ""
        self.info: ModelInfo | None = None
        self._runtime: Runtime | None = None
        self._scheduler: Scheduler | None = None
        self._host_memory: list[tuple[int, int]] = []  # (address, bytes) requests arrive in: pinned once loaded
        self._pin_lock = threading.Lock()
        self._pinned_runtime: Any = None
        # The event loop it serves (set by start): kept, as the scheduler keeps its own, because
        # asyncio.get_running_loop() costs a getpid system call per request on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.merge_max = 0  # measured at load (0: merging may fill max_batch)
        # Measured at load, judged again while serving: a batch's rows run one at a time (CPU, merging does not pay)
        self.rows_judge: RowsJudge | None = None
        self.lone_run_s: float | None = None  # a batch-1 run, seconds (measured at load; None: it could not run)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def rows_apart(self) -> bool:
        """Whether full batches run their rows one at a time now."""
        return self.rows_judge is not None and self.rows_judge.apart

    @property
    def scheduler(self) -> Scheduler | None:
        return self._scheduler

    def state_line(self) -> str:
        """What this process holds right now, in words (``server.dump_state``)."""
        scheduler = self._scheduler
        return (f"engine {os.getpid()}: model {self.state}; "
                f"{scheduler.state() if scheduler is not None else 'no scheduler yet'}")

    async def start(self) -> None:
        """Load and warm up off the event loop (health checks keep answering), then start batching."""
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        try:
            info, runtime = await asyncio.to_thread(self._load)
        except Exception as exc:
            self.state, self.error = "failed", str(exc)
            raise
        self.info, self._runtime = info, runtime
        outputs = info.output_names

        def run(feeds: Feeds) -> Outputs:
            return runtime.run(feeds, outputs)

        by_rows = getattr(runtime, "run_rows", None)  # GPU buckets copied request by request, never merged
        lone = getattr(runtime, "run_alone", None)  # CPU: a session over every core for lone requests

        def run_alone(feeds: Feeds) -> Outputs:
            assert lone is not None
            result: Outputs = lone(feeds, outputs)
            return result

        bind_on_loop = getattr(runtime, "bind_on_loop", None)  # sessions of this thread's own, for lone requests
        loop_sizes = bind_on_loop() if bind_on_loop is not None else frozenset()

        def run_rows(parts: list[Feeds], size: int) -> Outputs | None:
            return by_rows(parts, size, outputs) if by_rows is not None else None

        hands_off = bool(getattr(runtime, "hands_off", False))  # --slot-handoff on a GPU with bound sessions
        if hands_off:  # a slot's thread asks a busy event loop for the GIL sooner
            sys.setswitchinterval(HANDOFF_SWITCH_S)
            log.info("the event loop hands the GIL to the GPU slots' threads at each batch (switch interval %g ms)",
                     HANDOFF_SWITCH_S * 1e3)
        self._scheduler = Scheduler(
            run, BatchPolicy(info.max_batch, self.config.max_queue_delay_s, info.buckets, self.merge_max),
            max_queue=self.config.max_queue_size, observer=self._observer, instances=self.config.instances,
            empty=getattr(runtime, "batch_array", None),  # page-locked batch buffers where the backend has them
            executor=getattr(runtime, "executor", None),  # its own compute threads where it has them
            run_rows=run_rows if by_rows is not None else None, loop_sizes=loop_sizes, rows_judge=self.rows_judge,
            run_alone=run_alone if lone is not None else None, land_starts=hands_off,
        )
        self._scheduler.start()
        self.metrics.rows_apart_from(lambda: self.rows_apart)
        if self._awake is not None and not self._awake.suits(self.lone_run_s):
            log.info("cores not kept awake: a lone run takes %s, not under %.1f ms (a core's wake-up is a small part "
                     "of it)",
                     "an unknown time" if self.lone_run_s is None else f"{self.lone_run_s * 1e3:.2f} ms",
                     (self._awake.lone_run_max_s or 0) * 1e3)
            self._awake = None
        if self._awake is not None:
            scheduler = self._scheduler
            await self._awake.start(busy=lambda: scheduler.threads_busy)
        seconds = time.perf_counter() - started
        self.metrics.model_loaded(seconds)
        if self.state == "loading":  # a SIGTERM during loading leaves it draining
            self.state = "ready"
        log.info("model %r ready in %.1fs: %s backend, batch sizes %s, inputs %s", self.name, seconds,
                 info.backend, list(info.buckets), [(s.name, s.dtype, s.shape) for s in info.inputs])

    def _load(self) -> tuple[ModelInfo, Runtime]:
        loaded = self._loader()
        rt = loaded.runtime
        max_batch = effective_max_batch(self.config.max_batch, loaded.record, rt.max_batch)
        info = ModelInfo(
            name=self.name, platform=rt.platform, backend=loaded.backend, inputs=rt.inputs, outputs=rt.outputs,
            max_batch=max_batch, max_queue_delay_s=self.config.max_queue_delay_s, engine_key=loaded.key,
            target=loaded.target, buckets=choose_buckets(self.config.buckets, loaded.record, max_batch),
        )
        rt.prepare(info.buckets)
        with self._pin_lock:  # arenas made while loading are pinned now, later ones as they come
            self._pinned_runtime = rt
            for address, nbytes in self._host_memory:
                _pin(rt, address, nbytes)
        warm(rt, info)
        self.lone_run_s = time_lone_run(rt, info)
        self.merge_max, self.rows_judge = measure_merge_max(rt, info, self.config.instances)
        return info, rt

    def add_host_memory(self, address: int, nbytes: int) -> None:
        """Host memory that requests' tensors arrive in (a front-end's shared arena): a GPU backend page-locks
        it so that batches are copied to the device from there (``run_rows``), at full speed."""
        with self._pin_lock:
            self._host_memory.append((address, nbytes))
            if self._pinned_runtime is not None:
                _pin(self._pinned_runtime, address, nbytes)

    def infer_started(self, request: InferRequest) -> tuple[Admitted, asyncio.Future[Outputs]]:
        """Admit (BadRequest before queueing) and queue; the future resolves with this request's outputs."""
        started = time.perf_counter_ns()
        try:
            if self.state not in ("ready", "draining") or self.info is None:
                raise NotReady(not_ready_message(self))
            admitted = admit(self.info, request)
        except ServeError:
            self.statistics.record_failure(time.perf_counter_ns() - started)
            raise
        timeout = request.timeout_s if request.timeout_s is not None else self.config.timeout_s
        return admitted, self.enqueue(admitted.feeds, admitted.rows, admitted.signature, timeout, started)

    async def infer(self, request: InferRequest) -> tuple[Admitted, Outputs]:
        """Admit, queue, wait for this request's own outputs."""
        admitted, future = self.infer_started(request)
        return admitted, await future

    def enqueue(self, feeds: Feeds, rows: int, signature: Hashable, timeout_s: float,
                started_ns: int | None = None, requests: int = 1) -> asyncio.Future[Outputs]:
        """Queue admitted feeds (from ``infer`` or a front-end process; ``requests``: the client requests
        a front-end grouped into them); the future resolves with their outputs (or a ServeError). Raises
        ServeError at once when the request cannot be queued."""
        started = time.perf_counter_ns() if started_ns is None else started_ns
        try:
            if self.state not in ("ready", "draining") or self._scheduler is None:
                raise NotReady(not_ready_message(self))
            future = self._scheduler.enqueue(feeds, rows, signature, timeout_s)
            if self._awake is not None:
                self._awake.touch(self._scheduler.waiting_rows)
        except ServeError:
            self.statistics.record_failure(time.perf_counter_ns() - started, requests)
            raise
        future.add_done_callback(functools.partial(self._answered, rows, started, requests))
        return future

    async def submit(self, feeds: Feeds, rows: int, signature: Hashable, timeout_s: float,
                     started_ns: int | None = None) -> Outputs:
        """``enqueue`` and wait for the outputs."""
        return await self.enqueue(feeds, rows, signature, timeout_s, started_ns)

    def _answered(self, rows: int, started: int, requests: int, future: asyncio.Future[Outputs]) -> None:
        """The statistics of one answered request (a cancelled one, whose client went away, is not counted)."""
        if future.cancelled():
            return
        total = time.perf_counter_ns() - started
        if future.exception() is not None:
            self.statistics.record_failure(total, requests)
            return
        # The scheduler reports compute per batch, not per request: the batch that finished last is this
        # request's with one instance (its future resolves right after); an estimate with several.
        scheduler = self._scheduler
        compute = min(int(scheduler.last_compute_s * 1e9), total) if scheduler is not None else 0
        # Recorded on the loop's next turn, after the dispatcher's answer (a callback added after this one) has
        # gone to its front-end: the client does not wait for the statistics (``Scheduler._observe_later``).
        (self._loop or asyncio.get_running_loop()).call_soon(functools.partial(
            self.statistics.record_success, rows=rows, total_ns=total, queue_ns=total - compute,
            compute_infer_ns=compute, requests=requests))

    async def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    async def statistics_snapshot(self) -> StatsSnapshot:
        return self.statistics.snapshot()

    def begin_drain(self) -> None:
        """Not ready from now on (the pod leaves the Service's endpoints) but still serving."""
        if self.state in ("ready", "loading"):
            self.state = "draining"

    def flush(self) -> None:
        """Run queued requests without waiting for batches to fill (the listener has closed)."""
        if self._scheduler is not None:
            self._scheduler.flush()

    async def register_region(self, spec: RegionSpec) -> None:
        self.shared_memory.register(spec)

    async def unregister_region(self, name: str | None) -> None:
        self.shared_memory.unregister(name)

    async def close(self) -> None:
        self.begin_drain()
        if self._scheduler is not None:
            await self._scheduler.close()
        if self._runtime is not None:
            self._runtime.close()
        if self._awake is not None:
            self._awake.close()
        self.shared_memory.close()
        self.state = "stopped"


def _pin(runtime: Any, address: int, nbytes: int) -> None:
    pin = getattr(runtime, "pin_host", None)
    if pin is not None:
        pin(address, nbytes)
