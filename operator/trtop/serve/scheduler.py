"""The asyncio side of dynamic batching: a bounded queue, one worker, one compute thread.

``InferenceService`` submits admitted requests; the worker asks ``batching.next_batch``
what to run, runs merge -> backend -> split on a dedicated thread (the backends release
the GIL while computing, so the event loop keeps parsing requests meanwhile), and hands
each request its own slice. ``instances`` batches may run at once (Triton's instance
count): 1 when the backend spreads one batch over every core or the whole GPU; more
when each run uses one core (no barrier between threads that other work can stall).

Guarantees: a full queue refuses at once (``Overloaded``) instead of growing; a request
past its deadline leaves the queue (``TimedOut``) and never runs; when a merged batch
fails, its requests are re-run one by one so a request that breaks the backend fails
alone; ``close`` runs everything still queued before stopping (graceful drain).

Per request the path is callbacks, not tasks: ``enqueue`` returns a future (the engine
process's dispatcher adds a done-callback; ``submit`` awaits it) and a deadline (one timer per
scheduler, at the earliest deadline of what is queued or running). The observer (metrics, statistics) hears of
a batch a turn of the loop after its futures resolve, so that a front-end's reply leaves first (``_observe_later``).
A request that finds an instance free starts right after the I/O callbacks of the loop's
current round (``_kick``: requests read in the same round share the batch), not on the worker
task's next turn (waking the worker cost a lone ResNet-50 request ~25 us more on the H200
host: the task step, ``wait_for`` and the Event): inline on the event loop when that batch
size is known to take under ``inline_max_s`` (a tiny model: the hop to a compute thread and
back costs more than the run itself) or when it is the only request in the server and known to take
under ``inline_alone_max_s`` (the cores have nothing else to do; a lone CPU request saves two thread
hops), else on a compute thread. Where the runtime has compute threads of its own (GPU slots), a lone
request runs on the loop only at the batch sizes the runtime can run on the loop's thread
(``loop_sizes``) and only while requests come one at a time (none has met another in the server for
``QUIET_S``): blocking the loop for a GPU run would keep a second request from the other slot.
Where merging is not clearly faster than running the same rows one at a time (a CPU whose caches a
merged batch outgrows, measured at load: ``batching.rows_apart``), a batch still forms, but its rows
run one at a time on its compute thread, unmerged (a native front-end's group is one request of several
rows); the way is judged again from the full batches served, a few of which run the other way
(``batching.RowsJudge``). Only a request the scheduler started alone takes the runtime's lone-run
path (``run_alone``: on CPU a session over every core).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from trtop.serve.batching import (
    BatchBuffers, BatchPolicy, Decision, Pending, RowsJudge, Ticket, merge, next_batch, split,
)
from trtop.serve.errors import InferenceFailed, NotReady, Overloaded, ServeError, TimedOut
from trtop.serve.types import Array, Feeds, Outputs

log = logging.getLogger(__name__)

RunBatch = Callable[[Feeds], Outputs]  # one merged batch in, all outputs out
# The requests' own inputs and the batch size in, all outputs of the batch out, or None where the backend
# cannot take them unmerged (then they are merged and go through ``RunBatch``).
RunRows = Callable[[list[Feeds], int], "Outputs | None"]
# A lone request's run (nothing else queued or running when it started): the runtime may spread it over every
# core (CPU ONNX Runtime's wide session), which would only take cores from other runs under load.
RunAlone = Callable[[Feeds], Outputs]


class BatchObserver(Protocol):
    def dequeued(self, waited_s: float) -> None: ...

    def batch_done(self, rows: int, compute_s: float) -> None: ...


INLINE_MAX_S = 0.0005  # runs known to be shorter than this may run on the event loop itself
# A lone request (nothing else queued or running) whose run is known to be shorter than this runs on the
# event loop too: nothing is there to be kept waiting but requests that would find every core busy with
# it anyway, and the two hops to a compute thread and back cost MobileNetV2's lone CPU request ~0.27 ms
# of its ~6.7 on the development machine (bench/stages.py: to_thread 135 us, to_loop 135 us). Bounded
# so that health checks and metrics are never held up for long.
INLINE_ALONE_MAX_S = 0.025
# With the runtime's own compute threads, lone runs on the loop wait until no request has met another in the
# server for this long: under concurrent load a run on the loop would hold a request back from a free slot.
QUIET_S = 0.1
_EWMA = 0.2  # weight of the newest run in a bucket's mean compute time


class _Item:
    __slots__ = ("pending", "feeds", "future", "deadline", "timeout_s")

    def __init__(self, pending: Pending, feeds: Feeds, future: asyncio.Future[Outputs], timeout_s: float) -> None:
        self.pending = pending
        self.feeds = feeds
        self.future = future
        self.timeout_s = timeout_s
        self.deadline = 0.0  # loop time


class Scheduler:
    """Queue + worker for one model. Create, ``start()`` inside the event loop, ``close()`` at the end."""

    def __init__(
        self, run: RunBatch, policy: BatchPolicy, *, max_queue: int, observer: BatchObserver | None = None,
        instances: int = 1, clock: Callable[[], float] = time.monotonic, inline_max_s: float = INLINE_MAX_S,
        inline_alone_max_s: float = INLINE_ALONE_MAX_S,
        empty: Callable[[tuple[int, ...], Any], Array] | None = None, executor: Executor | None = None,
        run_rows: RunRows | None = None, loop_sizes: frozenset[int] = frozenset(), rows_judge: RowsJudge | None = None,
        run_alone: RunAlone | None = None, land_starts: bool = False,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max queue size must be >= 1, got {max_queue}")
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        self._run = run
        self._run_rows = run_rows  # the backend copies each request to the device itself (no merge here)
        self._run_lone = run_alone or run
        # Whether a batch's rows run one at a time, unmerged (``batching.rows_apart``: merging does not pay on
        # these cores), judged again and again from the full batches served (None: always merged)
        self.rows_judge = rows_judge
        self.policy = policy
        self._max_queue = max_queue
        self._observer = observer
        self._clock = clock
        self._queue: list[_Item] = []
        self._queued_rows = 0  # rows of what is queued (kept with the queue: read on every reply)
        self._wakeup = asyncio.Event()
        self._instances = instances
        # The runtime's own threads where it has them (GPU slots that own their CUDA graphs; no short runs
        # inline then: they would hop to those threads anyway), else ours.
        self._executor = executor or ThreadPoolExecutor(max_workers=instances, thread_name_prefix="trtop-batch")
        # Batch sizes a lone request may run at on the loop's thread: any with our own threads; with the
        # runtime's, those it can run here too (it keeps sessions for this thread, ``loop_sizes``).
        self._loop_sizes: frozenset[int] | None = None
        if executor is not None:
            inline_max_s = 0.0
            self._loop_sizes = loop_sizes
            if not loop_sizes:
                inline_alone_max_s = 0.0
        self._met_at = -math.inf  # when a request last arrived with another queued or running (clock)
        self._waits: list[float] = []  # queue waits of the batches taken, not yet told to the observer
        self.last_compute_s = 0.0  # the last batch's compute seconds (its requests' statistics)
        self._buffers = BatchBuffers(keep=instances, empty=empty)
        self._worker: asyncio.Task[None] | None = None
        self._running: set[object] = set()  # batches on compute threads (their futures)
        self._running_items: dict[object, list[_Item]] = {}  # their requests (deadlines apply while they run)
        # One timer for the earliest deadline of what is queued or running, instead of one per request (a timer
        # per request was ~6% of the engine process's CPU for a tiny model under uvloop).
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf
        self._flush = False  # draining: run what is queued without waiting for company
        self._closing = False
        self.batches = 0
        self._inline_max_s = inline_max_s
        self._inline_alone_max_s = inline_alone_max_s
        self._mean_s: dict[int, float] = {}  # batch size -> mean compute seconds (for inline runs)
        self._inline = 0  # batches running inline right now (0 or 1: they block the loop)
        self._kick_planned = False  # a _kick is scheduled for the end of this callback
        # Told True when the last free instance takes a batch and False when one is free again: the engine
        # process then stops and resumes reading its front-ends' descriptors (``read_gate``).
        self.on_full: Callable[[bool], None] | None = None
        self._full = False
        # Told the backlog (negative: room) when a batch it took left room in every instance's next batch: a
        # native front-end that holds its requests until it hears of room is told now, not at its next answer
        # (``Supervisor._room``).
        self.on_room: Callable[[int], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop it serves (set on first use)
        # A batch that lands starts the next (on a compute thread) before its own requests are answered
        # (``_land``; the runtime hands the GIL to its threads, ``--slot-handoff``)
        self._land_starts = land_starts

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def threads_busy(self) -> bool:
        """A batch runs on a compute thread now (it takes the GIL back when it ends: ``awake`` polls not)."""
        return bool(self._running)

    @property
    def waiting_rows(self) -> int:
        """Rows queued, not yet running (the cores' crowd, ``awake.KeepAwake.touch``)."""
        return self._queued_rows

    @property
    def backlog_rows(self) -> int:
        """Rows queued beyond what every instance's next batch takes (negative: room left in those batches).
        While it is positive a request that joins the queue cannot run in the next round of batches, so a
        native front-end loses nothing by keeping its requests and sending them grouped; it sends while
        there is room (``native/http/group.go``). Measured with the engine's backlog counted from the
        free instances only, that front-end held requests back from batches that then ran short (ResNet-50
        on the H200 host at 128 clients: 23 rows a batch against 31, 0.87 against 0.90 x)."""
        return self._queued_rows - self._instances * self.policy.gather

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._start_worker()

    def _start_worker(self) -> None:
        assert self._loop is not None
        self._worker = self._loop.create_task(self._work(), name="trtop-batch-worker")
        self._worker.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """A worker that fails is logged and replaced. It is what takes queued requests whenever no arrival
        does (the wait for company, a freed instance with requests left behind); without it they waited for
        the next arrival, and a native front-end that holds its requests until an answer comes sends none."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("the batch worker failed (%s); starting it again", exc, exc_info=exc)
        if not self._closing:
            self._start_worker()

    def flush(self) -> None:
        """Stop waiting for batches to fill (the server is draining)."""
        self._flush = True
        self._wakeup.set()

    def enqueue(self, feeds: Feeds, rows: int, signature: Hashable, timeout_s: float) -> asyncio.Future[Outputs]:
        """Queue one admitted request (rows = its batch dimension); the future resolves with its outputs,
        or ``TimedOut`` after ``timeout_s``. Raises at once when the queue is full or closing."""
        if self._closing:
            raise NotReady("the server is shutting down and takes no new requests")
        if len(self._queue) >= self._max_queue:
            raise Overloaded(f"the queue is full ({self._max_queue} requests waiting); retry shortly or add replicas")
        loop = self._loop or self._bind_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        busy = len(self._running) + self._inline >= self._instances
        now = self._clock()
        if self._running or self._inline or self._queue:
            self._met_at = now
        item = _Item(Pending(rows, signature, now, busy), feeds, future, timeout_s)
        item.deadline = loop.time() + timeout_s
        if item.deadline < self._deadline_at:
            self._watch(loop, item.deadline)
        self._queue.append(item)
        self._queued_rows += rows
        if busy or self._flush:
            self._wakeup.set()
        elif not self._kick_planned:  # an instance is free: start right after this callback, not on the worker's turn
            self._kick_planned = True
            loop.call_soon(self._kick)
        return future

    def state(self) -> str:
        """What it holds right now, in words (the engine's state dump, ``Supervisor.dump_state``)."""
        worker = "not started" if self._worker is None else "ended" if self._worker.done() else "running"
        oldest = self._clock() - self._queue[0].pending.enqueued_at if self._queue else 0.0
        return (f"requests queued {len(self._queue)} ({self._queued_rows} rows, the oldest for {oldest:.3f}s); "
                f"batches running {len(self._running)} of {self._instances}{' (full)' if self._full else ''}; "
                f"batch worker {worker}; batches run {self.batches}")

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # Kept: asyncio.get_running_loop() checks the process id (a getpid system call) every time, ~3% of the
        # event loop's time at a light model's request rate.
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _kick(self, threads_only: bool = False) -> None:
        """Start what the policy takes now with the instances that are free: on a compute thread, or inline
        when that batch size is known to be short; a wait for company is left to the worker task.

        It runs as the next ready callback, after the I/O callbacks of the loop's current round: requests
        read from several connections in one round (or sent in one message of a front-end's descriptors)
        share a batch. A short request run inline right where it was queued never let a batch form: after
        an idle spell had taught the server that batch 1 is short, a light model at 64 connections ran
        every request alone (mean batch 1.0-1.5 against ~17 this way, 2,700-3,300 against 3,300-3,550 req/s
        on the development machine), at the price of one turn of the loop for a lone request (~0.05 ms).

        ``threads_only``: a batch that would run inline is left to the worker task (``_land``: the answers of
        the batch that landed go first)."""
        self._kick_planned = False
        loop = self._loop or self._bind_loop()
        while self._queue:
            decision = self._decide(self._clock())
            if not decision.take or (threads_only and self._inline_now(decision.size, self._alone_take(decision))):
                self._wakeup.set()
                return
            items = self._take(decision, self._clock())
            if not items:
                continue
            alone = self._alone(items)
            if self._inline_now(decision.size, alone):
                self._run_inline(items, decision.size, alone)
            else:
                self._launch(loop, items, decision.size, alone)

    def _decide(self, now: float) -> Decision:
        idle = self._instances - len(self._running)
        return Decision() if idle <= 0 else next_batch(
            [i.pending for i in self._queue], self.policy, now, flush=self._flush, idle=idle)

    def _take(self, decision: Decision, now: float) -> list[_Item]:
        """The chosen requests out of the queue (those that timed out meanwhile left out)."""
        chosen = set(decision.take)
        items = [it for i, it in enumerate(self._queue) if i in chosen and not it.future.done()]
        self._queue = [it for i, it in enumerate(self._queue) if i not in chosen]
        self._queued_rows = sum(it.pending.rows for it in self._queue)
        if self._observer is not None:  # told once the answers are out (``_observe``)
            self._waits += [now - it.pending.enqueued_at for it in items]
        if self.on_room is not None and (backlog := self.backlog_rows) < 0:
            self.on_room(backlog)
        return items

    async def submit(self, feeds: Feeds, rows: int, signature: Hashable, timeout_s: float) -> Outputs:
        """Queue one admitted request and wait for its outputs (rows = its batch dimension)."""
        return await self.enqueue(feeds, rows, signature, timeout_s)

    def _watch(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        """Sweep for expired requests at ``at`` (earlier than the sweep already planned)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = at
        self._deadline_timer = loop.call_at(at, self._sweep)

    def _sweep(self) -> None:
        """Fail the requests past their deadline (queued: they leave the queue and never run; running: their
        answer is dropped when it comes), then plan the next sweep at the earliest deadline left."""
        self._deadline_timer, self._deadline_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        if any(it.deadline <= now for it in self._queue):
            kept = []
            for it in self._queue:
                if it.deadline > now:
                    kept.append(it)
                elif not it.future.done():
                    it.future.set_exception(TimedOut(
                        f"the request waited {it.timeout_s:g}s in the queue without running; "
                        "the server is overloaded (add replicas) or the timeout is too short"))
            self._queue = kept
            self._queued_rows = sum(it.pending.rows for it in kept)
        earliest = min((it.deadline for it in self._queue), default=math.inf)
        for items in self._running_items.values():
            for it in items:
                if it.future.done():
                    continue
                if it.deadline <= now:
                    it.future.set_exception(TimedOut(f"the request did not finish within {it.timeout_s:g}s"))
                else:
                    earliest = min(earliest, it.deadline)
        if earliest < math.inf:
            self._watch(loop, earliest)

    def _short(self, size: int) -> bool:
        """Runs of this batch size are known to take less than ``inline_max_s``."""
        mean = self._mean_s.get(size)
        return mean is not None and mean < self._inline_max_s

    def _alone(self, items: list[_Item]) -> bool:
        """One request taken with nothing else queued or running: a lone request."""
        return self._lone(len(items), len(self._queue))

    def _alone_take(self, decision: Decision) -> bool:
        """The batch ``decision`` takes would be a lone request (``_alone``, known before it is taken)."""
        return self._lone(len(decision.take), len(self._queue) - len(decision.take))

    def _lone(self, taken: int, left: int) -> bool:
        return taken == 1 and not left and not self._running and not self._inline

    def _inline_now(self, size: int, alone: bool) -> bool:
        """Run a batch on the event loop: its size is known to be short (``inline_max_s``), or it is one request
        with nothing else queued or running (``alone``) and known to take under ``inline_alone_max_s``."""
        if self._short(size):
            return True
        mean = self._mean_s.get(size)
        if not alone or mean is None or mean >= self._inline_alone_max_s:
            return False
        return self._loop_sizes is None or (size in self._loop_sizes and self._clock() - self._met_at >= QUIET_S)

    def _run_inline(self, items: list[_Item], size: int, alone: bool = False) -> None:
        """Run a batch on the event loop now (the caller checked it is short, or alone, and an instance is free)."""
        rows = [it.pending.rows for it in items]
        apart, ticket = self._way(rows)
        self._inline += 1
        try:
            parts, seconds, cpu_s = self._compute([it.feeds for it in items], rows, size, alone, apart)
        except Exception as exc:  # the backend's own exception types vary
            if len(items) > 1:
                log.warning("a batch of %d requests failed (%s); running them one by one", len(items), exc)
                for it in items:
                    self._run_inline([it], self.policy.bucket_for(it.pending.rows))
            else:
                self._fail(items[0], exc)
            return
        finally:
            self._inline -= 1
        self._finished(items, parts, rows, seconds)
        self._judge(ticket, cpu_s)

    async def close(self) -> None:
        """Run everything still queued, then stop the worker and its thread."""
        self._closing = True
        self.flush()
        if self._worker is not None:
            await self._worker
        while self._running:
            self._wakeup.clear()  # set by every batch that lands
            await self._wakeup.wait()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._executor.shutdown(wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = self._clock()
            decision = self._decide(now)
            if not decision.take:
                if self._closing and not self._queue:
                    return
                self._wakeup.clear()  # set again by an arrival, a finished batch or flush()
                timeout = None if decision.wake_at is None else max(0.0, decision.wake_at - now)
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            items = self._take(decision, now)
            if items and self._short(decision.size):
                self._run_inline(items, decision.size, self._alone(items))  # shorter than a hop to a thread and back
                await asyncio.sleep(0)  # let the loop read what arrived meanwhile
            elif items:
                self._launch(loop, items, decision.size, self._alone(items))

    def _way(self, rows: list[int]) -> tuple[bool, Ticket | None]:
        """Whether a batch of these requests' rows runs them apart (the judge's way), and its ticket for the
        judge."""
        if self.rows_judge is None or sum(rows) < 2:
            return False, None
        return self.rows_judge.way(sum(rows))

    def _launch(self, loop: asyncio.AbstractEventLoop, items: list[_Item], size: int, alone: bool = False) -> None:
        """Run a batch on a compute thread; it lands back on the loop through one callback (no task)."""
        rows = [it.pending.rows for it in items]
        apart, ticket = self._way(rows)
        done = self._executor.submit(self._compute, [it.feeds for it in items], rows, size, alone, apart)
        self._running.add(done)
        self._running_items[done] = items
        done.add_done_callback(lambda f: _call_soon_threadsafe(loop, self._land, items, rows, f, ticket))
        if len(self._running) >= self._instances and not self._full:
            self._full = True
            if self.on_full is not None:
                self.on_full(True)

    def _land(self, items: list[_Item], rows: list[int], done: Future[tuple[list[Outputs], float, float]],
              ticket: Ticket | None) -> None:
        exc = done.exception()
        if exc is not None and len(items) > 1:
            log.warning("a batch of %d requests failed (%s); running them one by one", len(items), exc)
            retry = asyncio.get_running_loop().create_task(self._run_one_by_one(items))
            self._running.add(retry)  # the instance stays busy while they run
            self._running_items[retry] = items
            retry.add_done_callback(self._batch_finished)
            self._running.discard(done)
            self._running_items.pop(done, None)
            return
        self._batch_finished(done)  # the instance is free before its requests hear back
        if self._land_starts and self._queue:
            # The next batch leaves for its thread before this one's requests are answered, not on the worker
            # task's turn after them (landing to the next launch 165 -> 64-92 us on an H100 at 64 clients, and
            # with the GIL handed to the slot's thread the device idled 1.0-1.1 ms between batches instead of
            # 1.6; alone it gained nothing: the thread waited behind the answers; thirty-eighth session).
            try:
                self._kick(threads_only=True)
            except Exception as exc_next:  # a bug in the policy: this batch's requests are answered all the same
                log.error("taking the next batch failed (%s); the batch worker tries again", exc_next, exc_info=exc_next)
                self._wakeup.set()
        if exc is not None:
            self._fail(items[0], exc)
            return
        parts, seconds, cpu_s = done.result()
        self._finished(items, parts, rows, seconds)
        self._judge(ticket, cpu_s)

    def _batch_finished(self, token: object) -> None:
        self._running.discard(token)
        self._running_items.pop(token, None)
        if self._full and len(self._running) < self._instances:
            self._full = False
            if self.on_full is not None:
                self.on_full(False)
        if self._queue or self._closing:  # the worker has work for the freed instance, or waits to close
            self._wakeup.set()

    async def _run_one_by_one(self, items: list[_Item]) -> None:
        """The requests of a failed batch, one by one, so only the one that breaks the backend fails."""
        loop = asyncio.get_running_loop()
        for it in items:
            rows = [it.pending.rows]
            apart = self.rows_judge is not None and self.rows_judge.apart and it.pending.rows > 1
            try:
                parts, seconds, _ = await loop.run_in_executor(
                    self._executor, self._compute, [it.feeds], rows, self.policy.bucket_for(it.pending.rows), False,
                    apart)
            except Exception as exc:  # the backend's own exception types vary
                self._fail(it, exc)
                continue
            self._finished([it], parts, rows, seconds)

    def _fail(self, item: _Item, exc: BaseException) -> None:
        """A request whose run failed gets its error; the observer still hears of its wait."""
        _resolve_error(item, exc)
        self._observe_later()

    def _finished(self, items: list[_Item], parts: list[Outputs], rows: list[int], seconds: float) -> None:
        self.batches += 1
        self.last_compute_s = seconds
        for it, part in zip(items, parts, strict=True):
            if not it.future.done():  # it may have timed out while running
                it.future.set_result(part)
        self._observe_later(sum(rows), seconds)  # real rows; padding is not work done

    def _observe_later(self, rows: int = 0, seconds: float = 0.0) -> None:
        """Tell the observer of the waits taken so far and of a batch of ``rows`` (0: none ran) one turn of the loop
        from now: after the answers' own callbacks, which a front-end's dispatcher writes at once when they are the
        last it waits for. Its histograms and statistics cost a lone light request ~20 us of the engine's ~110 on
        the development machine (``bench/trace_lone.py``, thirty-third session), none of which its client needs to
        wait for."""
        if self._observer is not None:
            (self._loop or self._bind_loop()).call_soon(self._observe, rows, seconds)

    def _observe(self, rows: int, seconds: float) -> None:
        observer, waits, self._waits = self._observer, self._waits, []
        if observer is None:
            return
        for waited in waits:
            observer.dequeued(waited)
        if rows:
            observer.batch_done(rows, seconds)

    def _judge(self, ticket: Ticket | None, cpu_s: float) -> None:
        """What a full batch cost, to the rows judge (which may change the way and says so)."""
        judge = self.rows_judge
        if judge is not None and judge.record(ticket, cpu_s):
            merged_s, apart_s = judge.last
            log.info("at %d rows, served batches took %.2f CPU ms merged and %.2f row by row (medians): rows %s now",
                     judge.size, merged_s * 1e3, apart_s * 1e3, "apart" if judge.apart else "merged")

    def _compute(self, feeds: list[Feeds], rows: list[int], size: int,
                 alone: bool = False, apart: bool = False) -> tuple[list[Outputs], float, float]:
        """Each request's outputs, and the seconds the batch took by the clock and on this thread's CPU: what
        the rows judge weighs (a batch that waits for the GIL or a core while the event loop runs is no slower
        for it: timed by the clock, the light model's batches at 64 connections took 4-7 ms merged or apart, a
        wait for the loop, and the way flapped)."""
        judged = self.rows_judge is not None  # else no CPU clock (a system call each; a GPU's lone request)
        start, cpu = time.perf_counter(), time.thread_time() if judged else 0.0
        parts = self._outputs(feeds, rows, size, alone, apart)
        return parts, self._timed(size or sum(rows), start), (time.thread_time() - cpu) if judged else 0.0

    def _outputs(self, feeds: list[Feeds], rows: list[int], size: int, alone: bool, apart: bool) -> list[Outputs]:
        run = self._run_lone if alone else self._run
        if apart:
            return [self._apart(run, f, n) for f, n in zip(feeds, rows, strict=True)]
        outputs = None
        # else merge passes the request through (it copies only a misaligned one)
        if self._run_rows is not None and (len(feeds) > 1 or size > sum(rows)):
            outputs = self._run_rows(feeds, size)
        if outputs is None:
            buffers = self._buffers.take(feeds, size)
            try:
                outputs = run(merge(feeds, size, buffers))
            finally:
                self._buffers.give(feeds, size, buffers)  # the outputs never alias the inputs
        return split(outputs, rows, size)

    @staticmethod
    def _apart(run: RunBatch, feeds: Feeds, rows: int) -> Outputs:
        """One request's outputs from one run per row (``rows_apart``): a native front-end sends its group of
        client requests as one request of their rows side by side, and a client may send several rows."""
        runs = [split(run(merge([feeds if rows == 1 else {k: v[i:i + 1] for k, v in feeds.items()}])), [1])[0]
                for i in range(rows)]
        return runs[0] if rows == 1 else {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}

    def _timed(self, key: int, start: float) -> float:
        """Seconds since ``start``, kept in the mean compute time of batch size ``key``."""
        seconds = time.perf_counter() - start
        mean = self._mean_s.get(key)  # a race between threads only blurs the mean
        self._mean_s[key] = seconds if mean is None else mean + _EWMA * (seconds - mean)
        return seconds


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(*args)
    except RuntimeError:  # the loop has closed (the process is exiting): nobody waits for the answer
        pass


def _resolve_error(item: _Item, exc: BaseException) -> None:
    if item.future.done():
        return
    if isinstance(exc, ServeError):
        item.future.set_exception(exc)
    else:
        log.error("inference failed: %s", exc, exc_info=exc)
        item.future.set_exception(InferenceFailed(f"the backend failed to run this request: {exc}"))

