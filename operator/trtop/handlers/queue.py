"""A coalescing work queue of ModelDeployments, with capped exponential backoff (like
client-go's rate-limited workqueue).

Watch events, the safety-net resync and retries ``add`` keys; workers ``get`` one, reconcile
it and call ``done``. A key is queued at most once: many events for one object before a
worker is free make one reconcile. A key being processed is never handed to a second worker;
events for it meanwhile re-queue it once it is done. ``retry`` schedules a key after
``base * 2**failures`` seconds (capped at ``max``); ``forget`` resets its failures.
``progress_age`` feeds the liveness probe: how long queued work has waited on no progress.
"""
from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, base_delay: float = 1.0, max_delay: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._base, self._max, self._clock = base_delay, max_delay, clock
        self._due: dict[K, float] = {}  # queued keys -> when they are due
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._processing: dict[K, float] = {}  # key -> when a worker took it
        self._again: dict[K, float] = {}  # added while processing: queued again when done
        self._failures: dict[K, int] = {}
        self._wakeup = asyncio.Event()
        self.last_progress = clock()

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: K, delay: float = 0.0) -> None:
        at = self._clock() + max(delay, 0.0)
        if key in self._processing:
            self._again[key] = min(at, self._again.get(key, at))
            return
        if key in self._due and self._due[key] <= at:
            return  # already queued, sooner: coalesced
        self._due[key] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, key))
        self._wakeup.set()

    def retry(self, key: K) -> float:
        """Queue ``key`` again after its backoff; returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = float(min(self._base * (2.0 ** min(failures, 30)), self._max))
        self.add(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        while True:
            now = self._clock()
            while self._heap:
                at, _, key = self._heap[0]
                if self._due.get(key) != at:  # superseded by a sooner add
                    heapq.heappop(self._heap)
                    continue
                if at > now:
                    break
                heapq.heappop(self._heap)
                del self._due[key]
                self._processing[key] = now
                return key
            self._wakeup.clear()
            timeout = (self._heap[0][0] - now) if self._heap else None
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass

    def done(self, key: K) -> None:
        self._processing.pop(key, None)
        self.last_progress = self._clock()
        again = self._again.pop(key, None)
        if again is not None:
            self.add(key, max(again - self._clock(), 0.0))

    def progress_age(self) -> float:
        """How long due or running work has gone without any item finishing (0 when idle)."""
        now = self._clock()
        waiting = [now - at for at in self._due.values() if at <= now] + [now - t for t in self._processing.values()]
        return min(max(waiting), now - self.last_progress) if waiting else 0.0
