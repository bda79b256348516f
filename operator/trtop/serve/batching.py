"""Dynamic batching as pure functions: which queued requests run together, when, and at what size.

``next_batch`` is the policy (the scheduler's asyncio worker calls it with the queue and
the clock); ``merge``, ``pad`` and ``split`` join requests along the batch dimension,
fill a batch up to its bucket and cut the results back. No asyncio, no clock, no backend
here, so every rule is tested directly.

Rules (Triton's dynamic batcher, with shape buckets):
- No idle wait: a request that arrives while an instance is free runs at once, alone if
  it is alone. Batches form from what queued up while every instance was busy; when an
  instance frees up it takes them at once (``max_delay`` > 0 lets a freed instance wait
  that long, counted from the oldest request's arrival, for a fuller batch: it applies
  only to requests that arrived while every instance was busy).
- Requests merge only when their ``signature`` (input shapes beyond the batch dim)
  is equal: a model cannot run a batch of mixed sequence lengths or image sizes.
- The oldest request always goes in the next batch (no starvation); younger requests of
  its signature fill the batch in arrival order while their rows fit ``max_batch``.
- Buckets: a batch runs only at one of the policy's ``buckets`` (the sizes the engine was
  warmed for). The policy takes rows that land exactly on a bucket when the queue allows
  (19 queued single-row requests make a batch of 16; the other 3 go next) and pads up to
  the next bucket only when it cannot (one request of 3 rows runs as 4).
- With several idle instances (batches that may run at once), the queued rows are shared
  between them instead of all going to the first: 8 queued rows and 2 idle instances
  make two batches of 4 that run side by side, not one of 8 beside an idle core.
"""
from __future__ import annotations

import bisect
import statistics
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from trtop.serve.types import Array, Feeds, Outputs


class Pending(NamedTuple):
    """What the policy needs to know about one queued request (a tuple: one is made per request)."""

    rows: int  # its batch dimension (a request with batch 4 counts 4)
    signature: Hashable  # shapes beyond the batch dim; only equal signatures merge
    enqueued_at: float  # monotonic seconds
    arrived_busy: bool = True  # every instance was busy when it arrived (only then may it wait)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int  # rows per batch (the engine's batch.max)
    max_delay: float = 0.0  # seconds a freed instance may wait for company (requests that arrived busy)
    buckets: tuple[int, ...] = field(default=())  # batch sizes that run; () = every size up to max_batch
    # The most rows merging gathers (0: max_batch). A larger batch can cost more per row than a small
    # one (on CPU: caches), so the server measures where batching stops paying (``paying_batch``);
    # one request of more rows still runs whole, up to max_batch.
    merge_max: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {self.max_batch}")
        if self.max_delay < 0:
            raise ValueError(f"max queue delay must be >= 0, got {self.max_delay}")
        if self.buckets and (list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] < 1
                             or self.buckets[-1] != self.max_batch):
            raise ValueError(f"buckets must be increasing sizes >= 1 ending at max batch {self.max_batch}, "
                             f"got {list(self.buckets)}")
        if not 0 <= self.merge_max <= self.max_batch:
            raise ValueError(f"merge max must be in 0..{self.max_batch}, got {self.merge_max}")

    @property
    def gather(self) -> int:
        """The most rows a merged batch takes."""
        return self.merge_max or self.max_batch

    def bucket_for(self, rows: int) -> int:
        """The batch size a batch of ``rows`` rows runs at (the smallest bucket that holds it)."""
        if not self.buckets:
            return rows
        return self.buckets[bisect.bisect_left(self.buckets, rows)]

    def bucket_below(self, rows: int) -> int:
        """The largest bucket <= rows (rows itself without buckets)."""
        if not self.buckets:
            return rows
        i = bisect.bisect_right(self.buckets, rows)
        return self.buckets[i - 1] if i else rows


@dataclass(frozen=True)
class Decision:
    """``take``: queue indices to run now (empty: nothing yet); ``wake_at``: when to ask again;
    ``size``: the batch size it runs at (its bucket: >= the rows taken, padded)."""

    take: tuple[int, ...] = ()
    wake_at: float | None = None  # None: only when something new arrives
    size: int = 0


def next_batch(
    pending: Sequence[Pending], policy: BatchPolicy, now: float, *, flush: bool = False, idle: int = 1,
) -> Decision:
    """The next batch to run from a FIFO queue, or when to look again (``idle``: free instances)."""
    if not pending or idle < 1:
        return Decision()
    head = pending[0]
    same = [i for i, item in enumerate(pending) if item.signature == head.signature]
    queued = sum(pending[i].rows for i in same)
    if head.arrived_busy and policy.max_delay > 0 and not flush and queued < policy.gather:
        due = head.enqueued_at + policy.max_delay
        if now < due:
            return Decision((), due)
    limit = min(policy.gather, -(-queued // idle))  # ceil: share the rows among idle instances
    take: list[int] = []
    rows = 0
    for i in same:
        if rows + pending[i].rows > limit and take:
            continue  # a smaller one further back may still fit
        take.append(i)
        rows += pending[i].rows
        if rows >= limit:
            break
    take, rows = _round_down_to_bucket(pending, take, rows, policy)
    return Decision(tuple(take), size=policy.bucket_for(rows))


def paying_batch(rows_per_s: dict[int, float], keep: float = 0.9, floor: int = 1, clear: float = 0.8) -> int:
    """The largest batch size that still pays: its throughput (rows per second with every instance
    busy) is at least ``keep`` x the best of the sizes up to it. On a GPU throughput grows with the
    batch and every size pays; on a small CPU a batch of 8 can serve half the rows per second of
    batch 1 (MobileNetV2 on 2 cores), and merging past that only adds waiting.

    Below ``floor`` rows only when the measurement says clearly (``floor``'s rate under ``clear``
    x the best up to it) that ``floor`` loses: the engine alone does not see the server's own
    cost per batch, and a serving cap under 4 lost where the measurement could not tell
    (``MERGE_FLOOR``)."""
    if not rows_per_s:
        raise ValueError("no batch size measured")
    best, chosen = 0.0, min(rows_per_s)
    for size in sorted(rows_per_s):
        rate = rows_per_s[size]
        if rate >= keep * max(best, rate):
            chosen = size
        best = max(best, rate)
    if chosen < floor and floor in rows_per_s:
        if rows_per_s[floor] >= clear * max(r for s, r in rows_per_s.items() if s <= floor):
            chosen = floor
    return chosen


def rows_apart(merged: Sequence[float], apart: Sequence[float], keep: float = 1.03) -> bool:
    """Whether a merged batch should run as one run per row, unmerged, on its compute thread: unless merging
    is measured clearly faster, i.e. the merged batch's rows per second (``merged``) beat those of the same
    rows run one at a time (``apart``) by more than ``keep``, best against best (both measured at the merge
    cap, in turns, with every instance busy). The batch still forms (one decision and one hop to a compute
    thread and back for several requests: the server's own cost per batch stays shared), but each row runs
    at the size the cores run best. A tie goes apart because the engine alone flatters merged batches:
    served, the batches share the caches with the server's own copies of the bodies. MobileNetV2 on the
    development machine, two 1-thread runs side by side: batch 4 265-306 img/s, four batch-1 runs in a row
    300-328 (0.93-0.97 x); served at 64 connections with the cap forced to 4, 0.70 x the in-process best
    merged against 0.82 x apart. A model that batches well (the light model: ~1.35 x at 32) stays merged;
    on a GPU (no rates: every bucket pays) nothing runs apart."""
    return bool(merged) and bool(apart) and max(merged) <= keep * max(apart)


class Ticket(NamedTuple):
    """A full batch's place in ``RowsJudge``'s sequence: which way it ran, under which verdict."""
    number: int
    apart: bool
    verdict: int


class RowsJudge:
    """Keeps judging, while the server serves, whether a full batch (``size`` real rows: the merge cap)
    runs best merged or with its rows apart (``rows_apart``'s rule and margin), from the compute times of
    the batches themselves. Start-up measures the engine alone, in turns of a fraction of a second, and
    shares whatever else the machine is doing then: on the development machine with CI running beside it,
    one start of MobileNetV2 measured merged 186/154, 156/156, 122/159 against apart and stayed merged,
    which serves ~0.70 x the in-process best at 64 connections where apart serves ~0.82 x.

    Served, the last ``phase`` of every ``period`` full batches run the other way (by default 8 of 128 with
    two instances: the wrong way's cost, ~10% for MobileNetV2, is paid for 1 batch in 16). A batch is
    evidence only where the ``neighbours`` batches started on either side of it (those that can run beside
    it: instances - 1) ran the same way: a way's cost includes what it does to the batch beside it (a
    merged MobileNetV2 batch of 4 beside one that runs apart took as long as that one, 28.6 against 28.7
    ms, while all-merged serving was ~10% slower than all-apart). Once the last ``window`` such batches of
    each way are known, the way whose median rows per second wins by the rule is kept; after a change both
    windows start again, so two ways that tie do not flap on one noisy batch. A way that wins by ``clear``
    or more (the light model's merged batch of 32: ~1.35 x its rows apart) is not probed for ``quiet``
    periods (then the probes cost ~1 in 100 full batches instead of 1 in 16).

    Pure: ``way`` says how the next batch runs and ``record`` takes what it cost; the scheduler calls both
    on its event loop. Batches of any other real row count run the way chosen and teach nothing."""

    def __init__(self, size: int, apart: bool, *, neighbours: int = 1, window: int = 16, phase: int | None = None,
                 period: int | None = None, keep: float = 1.03, clear: float = 1.2, quiet: int = 8) -> None:
        phase = max(8, 4 * neighbours) if phase is None else phase  # the clean middle of it at least half
        period = 16 * phase if period is None else period  # 1 in 16 full batches the other way
        if size < 2 or window < 1 or neighbours < 0 or not 2 * neighbours < phase < period:
            raise ValueError(f"size >= 2, window >= 1 and 2 x neighbours < phase < period: got size {size}, "
                             f"window {window}, neighbours {neighbours}, phase {phase}, period {period}")
        self.size = size
        self.apart = apart  # the way full batches run now
        self.changes = 0  # how often serving overturned the way (start-up's guess included)
        self.last = (0.0, 0.0)  # the medians, merged and apart (seconds a batch), at the last judgement
        self._neighbours, self._period, self._phase, self._keep = neighbours, period, phase, keep
        self._clear, self._quiet = clear, quiet
        self._full = 0  # full batches started
        self._verdict = 0  # verdicts so far (changes and clear wins): a ticket of an earlier one is no evidence
        self._since = 0  # the first full batch under this verdict
        self._quiet_until = 0  # no probes before this full batch (the way won clearly)
        self._seconds: dict[bool, deque[float]] = {True: deque(maxlen=window), False: deque(maxlen=window)}

    def _probe(self, number: int) -> bool:
        return number >= self._quiet_until and number % self._period >= self._period - self._phase

    def way(self, rows: int) -> tuple[bool, Ticket | None]:
        """Whether a batch of ``rows`` real rows runs its rows apart (True) or merged (False), and its ticket
        (None: a batch that is not full teaches nothing)."""
        if rows != self.size:
            return self.apart, None
        number = self._full
        self._full += 1
        apart = self.apart != self._probe(number)
        return apart, Ticket(number, apart, self._verdict)

    def record(self, ticket: Ticket | None, seconds: float) -> bool:
        """The batch of ``ticket`` took ``seconds`` on its compute thread. True when that changed the way."""
        if ticket is None or ticket.verdict != self._verdict or seconds <= 0:
            return False
        n, k = ticket.number, self._neighbours
        if n - k < self._since or any(self._probe(m) != self._probe(n) for m in range(n - k, n + k + 1)):
            return False  # it ran beside a batch of the other way (or of the previous verdict)
        self._seconds[ticket.apart].append(seconds)
        merged, alone = self._seconds[False], self._seconds[True]
        if len(merged) < (merged.maxlen or 0) or len(alone) < (alone.maxlen or 0):
            return False
        self.last = (statistics.median(merged), statistics.median(alone))
        verdict = rows_apart([self.size / self.last[0]], [self.size / self.last[1]], self._keep)
        ratio = self.last[0] / self.last[1] if verdict else self.last[1] / self.last[0]  # the winner's margin
        changed = verdict != self.apart
        if not changed and ratio < self._clear:
            return False  # a close call: keep judging batch by batch
        # A change, or a clear win (the light model merged: ~1.35 x): judge afresh, after a quiet spell if clear.
        self.apart = verdict
        self.changes += changed
        self._verdict += 1
        self._since = self._full
        if ratio >= self._clear:
            self._quiet_until = self._full + self._quiet * self._period
        merged.clear()
        alone.clear()
        return changed


# MobileNetV2 at 64 connections on two cores (docs/server-measured.md, fifth session): merged batches capped
# at 1-2 served 0.72-0.79 of the in-process best, capped at 4-16 0.88-0.98, in the same runs' terms,
# while the engine's own rates for 1..4 rows differed by less than the measurement's noise.
MERGE_FLOOR = 4


def _round_down_to_bucket(pending: Sequence[Pending], take: list[int], rows: int,
                          policy: BatchPolicy) -> tuple[list[int], int]:
    """Drop the youngest requests while that lands exactly on a smaller bucket (no padding);
    keep the batch as it is when no prefix of it does (it is padded up instead)."""
    target = policy.bucket_below(rows)
    if target == rows:
        return take, rows
    kept, total = list(take), rows
    while len(kept) > 1 and total > target:
        total -= pending[kept.pop()].rows
    return (kept, total) if total == target else (take, rows)


def signature_of(feeds: Feeds) -> Hashable:
    """The merge key of a request: each input's name, dtype and shape beyond the batch dim."""
    if len(feeds) == 1:  # the common case, once per request
        ((name, a),) = feeds.items()
        return ((name, a.dtype.str, a.shape[1:]),)
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items()))


def merge(requests: Sequence[Feeds], size: int = 0, into: dict[str, Array] | None = None) -> dict[str, Array]:
    """One batch of ``size`` rows (0: just the requests' rows) from requests of one signature.

    A single request that fills the batch is passed through (no copy) where it lies aligned for its
    type; otherwise the rows are copied once into ``into`` (reused buffers of exactly that shape:
    ``BatchBuffers``) or new arrays; padding rows repeat the last real row (valid input for any model,
    so padding never produces NaNs or slow paths; their outputs are dropped). Misaligned: ONNX Runtime's
    CPU provider ran a 602 KB float input at an odd address in 230 us against 40 us aligned (the "fat"
    model, one thread, development machine); a copy costs less. The front-ends place tensors aligned.
    """
    rows = sum(next(iter(r.values())).shape[0] for r in requests)
    size = max(size, rows)
    if len(requests) == 1 and size == rows and all(a.flags.aligned for a in requests[0].values()):
        return dict(requests[0])
    out: dict[str, Array] = {}
    for name, first in requests[0].items():
        batch = into[name] if into is not None else np.empty((size, *first.shape[1:]), dtype=first.dtype)
        start = 0
        for r in requests:
            part = r[name]
            batch[start:start + part.shape[0]] = part
            start += part.shape[0]
        if size > rows:
            batch[rows:] = batch[rows - 1]
        out[name] = batch
    return out


class BatchBuffers:
    """Reused input buffers per (signature, batch size): a fresh 19 MB array per batch (ResNet-50 at 32)
    costs the kernel's page faults and zeroing on every batch (~4 ms on an H200 host, more than the
    copy itself). Thread-safe: each batch takes a set and gives it back after its run."""

    def __init__(self, keep: int = 2, empty: Callable[[tuple[int, ...], Any], Array] | None = None) -> None:
        self._empty = empty if empty is not None else np.empty  # the runtime's (page-locked on a GPU)
        self._free: dict[tuple[Hashable, int], list[dict[str, Array]]] = {}
        self._keep = keep  # sets kept per shape (one per instance that may run it at once)
        self._lock = threading.Lock()

    def take(self, requests: Sequence[Feeds], size: int) -> dict[str, Array] | None:
        """A set of arrays shaped for this batch (None when the batch needs no copy)."""
        rows = sum(next(iter(r.values())).shape[0] for r in requests)
        if len(requests) == 1 and max(size, rows) == rows:
            return None
        key = (signature_of(requests[0]), max(size, rows))
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        return {name: self._empty((key[1], *a.shape[1:]), a.dtype) for name, a in requests[0].items()}

    def give(self, requests: Sequence[Feeds], size: int, buffers: dict[str, Array] | None) -> None:
        if buffers is None:
            return
        key = (signature_of(requests[0]), next(iter(buffers.values())).shape[0])
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self._keep:
                free.append(buffers)


def split(outputs: Outputs, rows: Sequence[int], size: int = 0) -> list[Outputs]:
    """Cut the outputs of a batch of ``size`` rows (0: the requests' rows; more when padded) back
    into per-request views (row counts in request order); padding rows are dropped."""
    total = sum(rows)
    expected = max(size, total)
    for name, a in outputs.items():
        if a.ndim == 0 or a.shape[0] != expected:
            raise ValueError(
                f"output {name!r} has shape {a.shape}, expected {expected} rows (one per input row): "
                "a model must keep the batch dimension first in its outputs to be batched"
            )
    if len(rows) == 1 and expected == total:
        return [dict(outputs)]
    parts: list[Outputs] = []
    start = 0
    for n in rows:
        parts.append({name: a[start:start + n] for name, a in outputs.items()})
        start += n
    return parts
