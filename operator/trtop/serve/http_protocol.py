"""uvicorn's httptools protocol with infer bodies read from the socket straight into a buffer of their size.

uvicorn's ``on_body`` appends each chunk to a ``bytes`` (a copy per chunk), pauses reading
past 64 KB and wakes the request's task, which takes the bytes and resumes reading: a
602 KB image costs ~10 such rounds and as many copies, then the app joins them and a
front-end copies the result into shared memory. Here an infer request whose
``Content-Length`` fits the limits gets a ``BodySink`` (``FastInfer.open_sink``) when its
headers are parsed (a front-end's sink is a region of its shared arena: the engine reads
the tensors there), and reads are buffered (``asyncio.BufferedProtocol``): while such a body is
arriving, the event loop's reads land in the sink itself (``get_buffer`` returns its free room,
never more than the body's remaining bytes), so the bytes are copied once, by the kernel,
reading never pauses and the request's task wakes once, at the end. Other reads go through
one buffer per process into the parser, as uvicorn does (no copy more than its own ``bytes``).

The parser is not fed the bytes that went into a sink, so it is replaced by a fresh one when
the body is whole (the next request starts at that byte). A sink that closes while its body is
still arriving (the request timed out) takes no more bytes: the rest are read into the
process's buffer and dropped. Sinks the app never took (a connection closed first) are given
back when the connection closes; those it took, when it has answered. The infer route's answer
goes out in one write (``Cork``). Used by ``server.uvicorn_config``.

**Infer requests without a task.** uvicorn runs every request as an asyncio task that talks
ASGI: the task is created, woken for the body, woken again for the outputs, and sends its
answer as two ASGI messages, each checked and written apart. On a light model that was about
half of the event loop's time per request. An infer request with a ``Content-Length`` (and no
``Expect: 100-continue``) is served here from the parser's callbacks instead: when its body is
whole, ``FastInfer.direct`` parses, admits and queues it, and the answer is written from the
callback that resolves its outputs (or at once, for a run inline or a refusal). It keeps
uvicorn's request cycle for everything around the answer: keep-alive, pipelined requests (they
wait, reading paused, until this one is answered, and until its answer has drained when the
client is not reading), graceful shutdown (the connection closes after its answer) and a
client that leaves (nothing is written). Every other request, and
an infer request this path does not take, runs as uvicorn's task through the ASGI app.
"""
from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from trtop.serve.errors import NotReady
from trtop.serve.infer_http import CLIENT_GONE, CORK, SINK, BodySink, FastInfer, error_parts

READ_BYTES = 256 * 1024  # one read outside a sink (uvloop's own buffer is this size)


class _Direct:
    """An infer request served without a task whose body is still arriving."""

    __slots__ = ("cycle", "sink", "started", "timer")

    def __init__(self, cycle: RequestResponseCycle, sink: BodySink | None, started: float) -> None:
        self.cycle = cycle
        self.sink = sink
        self.started = started
        self.timer: asyncio.TimerHandle | None = None


class SinkProtocol(HttpToolsProtocol):
    """One connection; ``fast`` is set on the subclass ``protocol_for`` makes, with ``_scratch``, the
    process's read buffer (reads run one at a time on the event loop, and each is parsed before the next).
    Its reads come through ``BufferedReads``."""

    fast: FastInfer
    _scratch: memoryview

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink: BodySink | None = None  # the body being received, when it has a sink
        self._sinks: list[BodySink] = []  # sinks opened on this connection (given back at its end)
        self._left = 0  # bytes of that body still to come straight from the socket (past the parser)
        self._into_sink = False  # the last get_buffer gave the sink's room
        self._direct: _Direct | None = None  # a request served without a task, waiting for its body
        self._in_headers = False  # inside uvicorn's on_headers_complete (the sink is not set up yet)
        self._deferred: tuple[RequestResponseCycle, Any] | None = None  # the start it asked for meanwhile
        self._undrained: RequestResponseCycle | None = None  # answered, waiting for the client to read it

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._left:
            sink = self._sink
            room = sink.room()[:self._left] if sink is not None else self._scratch[:0]
            self._into_sink = len(room) > 0
            return room if self._into_sink else self._scratch[:self._left]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if not self._left:
            self.data_received(self._scratch[:nbytes])  # type: ignore[arg-type]  # httptools takes any buffer
            if self._sink is not None and not self._sink.complete and self.parser is not None:
                self._left = self._sink.size - self._sink.filled  # the rest of the body: straight into the sink
            return
        if self._into_sink and self._sink is not None:
            self._sink.advance(nbytes)
        self._left -= nbytes
        if not self._left:
            self._body_read()

    def _body_read(self) -> None:
        """The body ended past the parser: a fresh parser for the next request, and the request's task wakes."""
        self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own
        except AttributeError:  # httptools < 0.6.3
            pass
        self.on_message_complete()

    def on_headers_complete(self) -> None:
        self._in_headers = True
        try:
            super().on_headers_complete()
        finally:
            self._in_headers = False
        deferred, self._deferred = self._deferred, None
        self._sink = None
        if "path" not in self.scope or self.cycle is None or self.cycle.scope is not self.scope:
            return  # an upgrade: no request cycle
        cork = Cork(self.cycle.transport)
        self.cycle.transport = cork  # type: ignore[assignment]
        self.scope[CORK] = cork  # type: ignore[literal-required]
        sink = self.fast.open_sink(self.scope)
        if sink is not None:
            self.scope[SINK] = sink  # type: ignore[literal-required]
            self._sink = sink
            self._sinks = [s for s in self._sinks if not s.closed]
            self._sinks.append(sink)
        if deferred is not None:
            self._start_asgi_task(*deferred)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """uvicorn starts a request here (at its headers, or when the one before it is answered): without
        a task where ``_start_direct`` takes it."""
        if self._in_headers:  # decided once on_headers_complete has set up the body's sink
            self._deferred = (cycle, app)
        elif not self._start_direct(cycle, app):
            super()._start_asgi_task(cycle, app)

    def _start_direct(self, cycle: RequestResponseCycle, app: Any) -> bool:
        scope = cycle.scope
        if app is not self.app or cycle.waiting_for_100_continue or not self.fast.takes_directly(scope):
            return False
        sink: BodySink | None = scope.get(SINK)  # type: ignore[assignment]
        direct = _Direct(cycle, sink, time.perf_counter())
        self.fast.service.metrics.request_started()
        if cycle.more_body:
            direct.timer = self.loop.call_later(self.fast.body_timeout_s, self._body_timed_out, direct)
            self._direct = direct
        else:  # a pipelined request whose body came while the one before it was served
            self._serve(direct)
        return True

    def _serve(self, direct: _Direct) -> None:
        cycle = direct.cycle
        self.fast.direct(cycle.scope["headers"], cycle.body, direct.sink, direct.started,
                         functools.partial(self._answer, cycle))

    def _body_timed_out(self, direct: _Direct) -> None:
        """Answered 400 as the task path does; the rest of the body is dropped as it comes (the sink is
        closed, and uvicorn ignores a body after its answer), and the connection serves the next request."""
        if self._direct is not direct:
            return
        self._direct = None
        if direct.sink is not None:
            direct.sink.close()
        error = self.fast.body_late()
        self.fast.service.metrics.request_finished(error.outcome, time.perf_counter() - direct.started)
        self._answer(direct.cycle, *error_parts(error))

    def _answer(self, cycle: RequestResponseCycle, status: int, headers: dict[str, str], payload: bytes) -> None:
        """Write the answer of a request served without a task (head and body in one write), then let
        uvicorn's cycle go on as after an ASGI answer: close or keep alive, start what was pipelined."""
        cycle.response_started = True
        if cycle.disconnected or self.transport.is_closing():
            cycle.response_complete = True
            return
        parts = [STATUS_LINE[status]]
        for name, value in cycle.default_headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(payload))
        parts += (f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if len(payload) <= 16384:
            parts.append(payload)
            self.transport.write(b"".join(parts))
        else:  # no copy of a large payload
            self.transport.writelines((b"".join(parts), payload))
        if self.flow.write_paused and cycle.keep_alive:
            # The client is not reading its answers: the next request waits until this one has drained
            # (``resume_writing``), as uvicorn's own send waits, so a client that pipelines requests and
            # never reads cannot make the server hold their answers without bound.
            self._undrained = cycle
            return
        self._complete(cycle)

    def _complete(self, cycle: RequestResponseCycle) -> None:
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()

    def resume_writing(self) -> None:
        super().resume_writing()
        cycle, self._undrained = self._undrained, None
        if cycle is not None and not cycle.disconnected:
            self._complete(cycle)

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is None:
            super().on_body(body)
        elif not sink.write(body):  # closed (timed out) or longer than declared: the app answers
            self._sink = None

    def on_message_complete(self) -> None:
        self._sink = None
        super().on_message_complete()
        direct = self._direct
        if direct is not None and direct.cycle is self.cycle and not direct.cycle.more_body:
            self._direct = None
            if direct.timer is not None:
                direct.timer.cancel()
            self._serve(direct)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._undrained = None
        direct, self._direct = self._direct, None
        if direct is not None:  # it left mid-body: counted as the task path counts it
            if direct.timer is not None:
                direct.timer.cancel()
            gone = NotReady(CLIENT_GONE)
            self.fast.service.metrics.request_finished(gone.outcome, time.perf_counter() - direct.started)
        self._left = 0
        for sink in self._sinks:
            if not sink.taken:  # the app closes those it took, once it is done with them
                sink.close()
        self._sinks.clear()


class Cork:
    """A request's view of the connection's transport that can hold the response's head for its body.

    uvicorn writes the status line and headers, then the body: two sends. On loopback each send runs
    the receiver's side of TCP and wakes the client, which reads the head alone and waits again (py-spy
    of a one-process server at one client: the head's write took more samples than the body's). The
    infer route calls ``hold`` before it answers: the next write (the head) waits for the following
    one (the body) and both go in one ``writelines``. Everything else passes through."""

    __slots__ = ("transport", "_hold", "_held")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._hold = False
        self._held: bytes | None = None

    def hold(self) -> None:
        """The next write is kept until the one after it."""
        self._hold = True

    def write(self, data: bytes) -> None:
        if self._hold:
            self._hold, self._held = False, data
            return
        held, self._held = self._held, None
        if held is None:
            self.transport.write(data)
        else:
            self.transport.writelines((held, data))

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self.transport.write(held)
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class BufferedReads(asyncio.BufferedProtocol):
    """The connection's protocol as the event loop sees it: a ``BufferedProtocol`` in front of the HTTP one.

    uvloop reads into the protocol's own buffer only when the protocol is not an ``asyncio.Protocol``
    (uvicorn's is one; uvloop then hands every read over as a new ``bytes``), so this holds the HTTP
    protocol and passes every event on to it. ``http`` is set on the subclass ``protocol_for`` makes."""

    __slots__ = ("protocol",)
    http: type[SinkProtocol]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.protocol = self.http(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.protocol.connection_made(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def eof_received(self) -> None:
        self.protocol.eof_received()  # uvicorn's returns nothing: the transport closes itself

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.protocol.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.protocol.buffer_updated(nbytes)


def protocol_for(fast: FastInfer) -> type[asyncio.BaseProtocol]:
    """The protocol class uvicorn makes one of per connection, for this app."""
    http = type("InferProtocol", (SinkProtocol,), {"fast": fast, "_scratch": memoryview(bytearray(READ_BYTES))})
    return type("InferReads", (BufferedReads,), {"http": http})
