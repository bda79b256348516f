"""Dynamic batching as pure functions: which queued requests run together, and when.

``next_batch`` is the policy (the scheduler's asyncio worker calls it with the queue and
the clock); ``merge`` and ``split`` join requests along the batch dimension and cut the
results back. No asyncio, no clock, no backend here, so every rule is tested directly.

Rules:
- Requests merge only when their ``signature`` (input shapes beyond the batch dim)
  is equal: a model cannot run a batch of mixed sequence lengths or image sizes.
- The oldest request always goes in the next batch (no starvation); younger requests of
  its signature fill the batch in arrival order while their rows fit ``max_batch``.
- A batch leaves at once when full; otherwise when its oldest request has waited
  ``max_delay`` (or at once when ``flush``: the server is draining).
- With several idle instances (batches that may run at once), the queued rows are shared
  between them instead of all going to the first: 8 queued rows and 2 idle instances
  make two batches of 4 that run side by side, not one of 8 beside an idle core.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from trtop.serve.types import Array, Feeds, Outputs


@dataclass(frozen=True)
class Pending:
    """What the policy needs to know about one queued request."""

    rows: int  # its batch dimension (a request with batch 4 counts 4)
    signature: Hashable  # shapes beyond the batch dim; only equal signatures merge
    enqueued_at: float  # monotonic seconds


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int  # rows per batch (the engine's batch.max)
    max_delay: float  # seconds the oldest request may wait for company

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {self.max_batch}")
        if self.max_delay < 0:
            raise ValueError(f"max queue delay must be >= 0, got {self.max_delay}")


@dataclass(frozen=True)
class Decision:
    """``take``: queue indices to run now (empty: nothing yet); ``wake_at``: when to ask again."""

    take: tuple[int, ...] = ()
    wake_at: float | None = None  # None: only when something new arrives


def next_batch(
    pending: Sequence[Pending], policy: BatchPolicy, now: float, *, flush: bool = False, idle: int = 1,
) -> Decision:
    """The next batch to run from a FIFO queue, or when to look again (``idle``: free instances)."""
    if not pending:
        return Decision()
    head = pending[0]
    same = [i for i, item in enumerate(pending) if item.signature == head.signature]
    queued = sum(pending[i].rows for i in same)
    due = head.enqueued_at + policy.max_delay
    if not (queued >= policy.max_batch or flush or now >= due):
        return Decision((), due)
    limit = min(policy.max_batch, -(-queued // max(1, idle)))  # ceil: share the rows among idle instances
    take: list[int] = []
    rows = 0
    for i in same:
        if rows + pending[i].rows > limit and take:
            continue  # a smaller one further back may still fit
        take.append(i)
        rows += pending[i].rows
        if rows >= limit:
            break
    return Decision(tuple(take))


def signature_of(feeds: Feeds) -> Hashable:
    """The merge key of a request: each input's name, dtype and shape beyond the batch dim."""
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items()))


def merge(requests: Sequence[Feeds]) -> dict[str, Array]:
    """One batch from requests of one signature (a single request is passed through, no copy)."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}


def split(outputs: Outputs, rows: Sequence[int]) -> list[Outputs]:
    """Cut batch outputs back into per-request views (row counts in request order)."""
    total = sum(rows)
    for name, a in outputs.items():
        if a.ndim == 0 or a.shape[0] != total:
            raise ValueError(
                f"output {name!r} has shape {a.shape}, expected {total} rows (one per input row): "
                "a model must keep the batch dimension first in its outputs to be batched"
            )
    if len(rows) == 1:
        return [dict(outputs)]
    parts: list[Outputs] = []
    start = 0
    for n in rows:
        parts.append({name: a[start:start + n] for name, a in outputs.items()})
        start += n
    return parts
