"""The engine process stops reading its front-ends' descriptors while every instance is busy.

A request that arrives while every instance runs a batch cannot start before one of them is free, so
reading its descriptor at once buys it nothing; each read costs the engine's one event loop a wake-up,
a system call and an unpickle. Under load that loop is the pod's narrowest part (a tiny model on the
H200 host: the engine process at one core while front-ends had cores to spare), and gRPC front-ends
send about one descriptor per frame (grpc.aio hands the loop one call at a time) where HTTP ones send
~24. So while the scheduler says it is full (``Scheduler.on_full``) the engine pauses reading every
front-end's channel; the descriptors wait in the socket buffers, and when an instance is free they
are all read in one turn of the loop, before the freed instance takes its next batch (the loop
polls for I/O before it runs the worker that the finished batch woke). H200 host, tiny model, gRPC
at 256 in flight, six pairs of servers: 21,823-34,014 req/s with the gate against 20,736-33,510
without, more in every pair (+504 to +6,883), batches of 26.8-31.3 rows against 24.3-29.9;
ResNet-50 unchanged (docs/server-measured.md, eighteenth session).

A lone request never meets the gate (an instance is free when it comes). The gate opens again after
``MAX_CLOSED_S`` whatever the instances do, so a long batch never holds the front-ends' other
messages (metrics, statistics, shared memory registrations) for longer than that.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from trtop.serve.channel import Channel

MAX_CLOSED_S = 0.001


class ReadGate:
    """Pauses and resumes reading on the channels ``channels()`` names (the current front-ends')."""

    def __init__(self, channels: Callable[[], Iterable[Channel | None]], max_closed_s: float = MAX_CLOSED_S) -> None:
        self._channels = channels
        self._max_closed_s = max_closed_s
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.closings = 0  # times it closed (statistics for tests and benchmarks)

    def __call__(self, full: bool) -> None:
        """``Scheduler.on_full``: close while every instance is busy, open when one is free."""
        if full:
            self.close()
        else:
            self.open()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.closings += 1
        for channel in self._channels():
            if channel is not None:
                channel.pause_reading()
        self._timer = asyncio.get_running_loop().call_later(self._max_closed_s, self.open)

    def open(self) -> None:
        if not self.closed:
            return
        self.closed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for channel in self._channels():
            if channel is not None:
                channel.resume_reading()
