"""The engine process's end of one front-end: descriptors in, batched inference, results in place.

A front-end sends ``("infer", id, rows, inputs, outputs, timeout_s[, requests])`` where ``inputs`` are
``(name, dtype, shape, offset, inline)``: a place in its arena, or (tensors of at most
``frontend.INLINE_BYTES``) the bytes themselves; ``outputs`` are ``(name, (offset, shape))``
places or None; the dispatcher wraps the inputs as numpy views (no copy), submits them to
the service's scheduler (where they batch with every other front-end's requests), writes
each output into its place and replies ``("done", id, error, outputs, backlog)`` (``backlog``: the
scheduler's rows queued beyond what every instance's next batch takes, negative while they have
room; a native front-end keeps its requests and groups them while it is positive, and says so, ``("held",)``;
when a batch taken leaves room it gets ``("room", backlog)`` at once instead of waiting for its next answer:
``room``). ``requests``: how many
client requests the native front-end grouped into this one (their rows side by side; statistics). An output without
a place (a shape only known after the run, or a small one) travels inline as bytes. Every descriptor gets exactly one reply, even on
error, because the front-end frees the request's arena regions only then.

Front-ends also report finished requests for the metrics (``"requests"``) and requests they
refused at admission for the statistics (``"failed"``), and ask for the exposition text
(``"metrics"``) and the statistics (``"statistics"``): the engine process holds the one
copy of both for the pod. It holds the one registry of shared memory regions too: a front-end
forwards a (un)registration (``("shm", id, op, arg)``); once it is applied every Python front-end
gets the list of regions (``("regions", specs)``, ``regions_changed``) before the asker gets its answer. When a front-end goes away, its queued requests
still run or time out, and their replies are dropped.
Made by ``supervisor``.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from trtop.serve.arena import Arena
from trtop.serve.batching import signature_of
from trtop.serve.channel import PICKLE, Channel, Codec, Message
from trtop.serve.errors import BadRequest, InferenceFailed, ServeError
from trtop.serve.service import InferenceService
from trtop.serve.settings import small_request_bytes
from trtop.serve.shared_memory import RegionSpec
from trtop.serve.types import Outputs

log = logging.getLogger(__name__)

Place = tuple[str, str, tuple[int, ...], int]  # name, dtype, shape, offset


def error_of(exc: BaseException) -> tuple[str, str, float]:
    """(error class name, message, retry-after seconds) as a front-end rebuilds it."""
    if isinstance(exc, ServeError):
        return type(exc).__name__, str(exc), float(getattr(exc, "retry_after_s", 0.0))
    return InferenceFailed.__name__, f"the backend failed to run this request: {exc}", 0.0


class Dispatcher:
    def __init__(self, index: int, service: InferenceService, arena: Arena, follows_regions: bool = True) -> None:
        self.index = index
        self.service = service
        self.arena = arena
        self.follows_regions = follows_regions  # a Python front-end: it keeps a copy of the region registry
        self.regions_changed: Callable[[], None] | None = None  # tells every front-end (set by the supervisor)
        self.small_bound_set = False  # --small-group-limit was given: every model's small requests take it
        self.channel: Channel | None = None
        self._pending: set[asyncio.Future[Outputs]] = set()  # requests queued or running
        self.closed = asyncio.Event()
        self.heard = False  # a message came: a Python front-end sends one once its signal handlers are set
        self._ping_out = False  # a ping is unanswered (``ping``)
        self._missed = 0  # checks since it left
        self._pings = 0
        # A native front-end said it holds requests, and has not been told of room since (``room``). Python
        # front-ends hold none.
        self._holding = False
        self.helds = self.rooms = 0  # times it said it held requests, and was told of room (the state line)

    async def open(self, sock: socket.socket, codec: Codec = PICKLE) -> None:
        self.channel = await Channel.open(sock, self._on_message, self._on_close, codec)

    def send_state(self) -> None:
        """Tell the front-end what the model is and whether it serves (on start and every change)."""
        if self.channel is not None:
            s = self.service
            # merge_max: the rows a merged batch may reach (0: max batch); a native front-end's groups stop there.
            # Then what makes a request small for its small requests' bound (0: none is).
            self.channel.send(("state", s.state, s.error, s.info, s.merge_max,
                               small_request_bytes(s.lone_run_s, self.small_bound_set)))
            if len(s.shared_memory):  # a front-end started after registrations
                self.send_regions()

    def send_regions(self) -> None:
        if self.channel is not None and self.follows_regions:
            self.channel.send(("regions", [(r.name, r.key, r.offset, r.byte_size)
                                           for r in self.service.shared_memory.specs()]))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _on_close(self) -> None:
        self.closed.set()

    def _on_message(self, message: Message) -> None:
        self.heard = True
        try:
            self._handle(message)
        except Exception as exc:  # noqa: BLE001 - a front-end's bug costs its one message, not its channel
            # Raised out of the channel's read, it closed the transport: every request the front-end had in
            # flight was dropped with it. Now the message fails alone; its request, when its id reads, is answered.
            rid = message[1] if (isinstance(message, (list, tuple)) and len(message) > 1 and message[0] == "infer"
                                 and isinstance(message[1], int) and not isinstance(message[1], bool)) else None
            log.error("front-end %d sent a message the engine cannot read (%s: %s); %s", self.index,
                      type(exc).__name__, exc, "its request is failed" if rid is not None else "ignored")
            if rid is not None:
                self._failed(rid, InferenceFailed(f"the front-end's descriptor of this request could not be read: "
                                                  f"{type(exc).__name__}: {exc}"), read=True)

    def _handle(self, message: Message) -> None:
        kind = message[0]
        if kind == "infer":
            self._infer(message)
        elif kind == "requests":
            _, started, finished = message
            self.service.metrics.requests_reported(started, finished)
        elif kind == "metrics":
            text, content_type = self.service.metrics.render()
            self._send(("metrics", message[1], text, content_type))
        elif kind == "statistics":
            self._send(("statistics", message[1], self.service.statistics.snapshot()))
        elif kind == "held":
            self._holding = True
            self.helds += 1
        elif kind == "pong":
            self._ping_out = False
        elif kind == "failed":  # a request the front-end refused before it reached the engine
            self.service.statistics.record_failure(message[1])
        elif kind == "shm":
            self._change_regions(message[1], message[2], message[3])
        else:
            log.warning("front-end %d sent an unknown message %r; ignored", self.index, kind)

    def ping(self) -> int:
        """One check of the front-end's event loop: a ping goes out unless one is unanswered; returns for how
        many checks the one out has been (0: none was). A front-end whose loop is stuck answers nothing while
        its process lives and its sockets stay open (``Supervisor._check_frontends``). Checks, not seconds: if
        the engine's own loop stalls, fewer checks run, and a pong it has not read yet counts against nobody."""
        if self._ping_out:
            self._missed += 1
            return self._missed
        if self.channel is not None and not self.channel.closed:
            self._pings += 1
            self._ping_out, self._missed = True, 0
            self.channel.send(("ping", self._pings))
        return 0

    def _change_regions(self, rid: int, op: str, arg: Any) -> None:
        regions = self.service.shared_memory
        try:
            if op == "register":
                regions.register(RegionSpec(*arg))
            elif op == "unregister":
                regions.unregister(arg)
            else:
                raise BadRequest(f"unknown shared memory operation {op!r}")
        except ServeError as exc:
            self._send(("shm", rid, error_of(exc)))
            return
        if self.regions_changed is not None:
            self.regions_changed()
        else:
            self.send_regions()
        self._send(("shm", rid, None))

    def _send(self, message: Message) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def _infer(self, message: Message) -> None:
        """Queue one request; its reply goes out from the future's callback (no task per request)."""
        # A descriptor that does not unpack, or whose tensors do not read, is the front-end's bug: it raises to
        # ``_on_message``, which fails this request alone.
        rid, rows, inputs, outputs, timeout_s = message[1:6]
        requests = message[6] if len(message) > 6 else 1
        feeds = {name: self.arena.view(offset, dtype, shape) if inline is None
                 else np.frombuffer(inline, dtype=dtype).reshape(shape)  # a small tensor sent in the descriptor
                 for name, dtype, shape, offset, inline in inputs}
        try:
            future = self.service.enqueue(feeds, rows, signature_of(feeds), timeout_s, requests=requests)
        except Exception as exc:  # ServeError: refused at once; anything else fails this request alone
            self._failed(rid, exc, read=True)
            return
        self._pending.add(future)
        future.add_done_callback(functools.partial(self._answer, rid, outputs))

    def _answer(self, rid: int, outputs: list[tuple[str, tuple[int, tuple[int, ...]] | None]],
                future: asyncio.Future[Outputs]) -> None:
        self._pending.discard(future)
        if future.cancelled():
            self._failed(rid, InferenceFailed("the request was cancelled"))
            return
        error = future.exception()
        if error is not None:
            self._failed(rid, error)
            return
        try:
            result = future.result()
            places = [self._place(name, result[name], where) for name, where in outputs]
        except Exception as exc:  # an output the model did not produce
            self._failed(rid, exc)
            return
        self._reply(("done", rid, None, places, self._told()))

    def _failed(self, rid: int, exc: BaseException, read: bool = False) -> None:
        """``read``: refused while its descriptor's frame is being read (the others in it join the reply's)."""
        if not isinstance(exc, ServeError):
            log.error("request %s of front-end %d failed: %s", rid, self.index, exc, exc_info=exc)
        message = ("done", rid, error_of(exc), None, self._told())
        if read:
            self._send(message)
        else:
            self._reply(message)

    def _reply(self, message: Message) -> None:
        """A request's reply, written at once when it is the last this front-end waits for (nothing else could
        join its frame but what is queued already: a lone request's reply leaves a turn of the loop sooner),
        else at the end of this turn with the others of its batch."""
        if self.channel is not None:
            self.channel.send(message, now=not self._pending)

    def _told(self) -> int:
        """The engine's backlog, for an answer (one that says there is room lets a holding front-end's requests go)."""
        scheduler = self.service.scheduler
        backlog = 0 if scheduler is None else scheduler.backlog_rows
        if backlog < 0:
            self._holding = False
        return backlog

    def room(self, backlog: int) -> None:
        """``Scheduler.on_room``: a batch just taken left room (``backlog`` < 0) in every instance's next batch.
        A native front-end that holds requests (it believes the engine full) keeps them until an answer of its
        own says otherwise; with one instance (the GPU default) and four front-ends at 128 clients, all four held
        while the engine's queue ran out, and an eighth of the batches ran with 8 rows or fewer
        (docs/server-measured.md, thirty-sixth session). Told now, it sends what waits, in time for the next
        batch. Only a front-end that said it holds requests is told, once: told whenever its view (as last
        told, plus what it sent since) said full, as in the first form, a lone request's front-end was sent a
        message, and woke, while the engine computed its request, a cost on every lone request for nothing."""
        if self._holding and self.channel is not None:
            self._holding = False
            self.rooms += 1
            self.channel.send(("room", backlog))

    def _place(self, name: str, value: Any, where: tuple[int, tuple[int, ...]] | None) -> tuple[Any, ...]:
        """Write one output into its arena place when it fits there, else send it inline."""
        array = np.ascontiguousarray(value)
        if where is not None:
            offset, shape = where
            if tuple(array.shape) == tuple(shape):
                np.copyto(self.arena.view(offset, array.dtype, array.shape), array)
                return name, array.dtype.str, array.shape, offset, None
        return name, array.dtype.str, array.shape, -1, array.tobytes()

    async def wait_idle(self) -> None:
        while self._pending:
            await asyncio.wait(list(self._pending))

