"""uvicorn's httptools protocol with infer bodies written straight into a buffer of their size.

uvicorn's ``on_body`` appends each chunk to a ``bytes`` (a copy per chunk), pauses reading
past 64 KB and wakes the request's task, which takes the bytes and resumes reading: a
602 KB image costs ~10 such rounds and as many copies, then the app joins them and a
front-end copies the result into shared memory. Here an infer request whose
``Content-Length`` fits the limits gets a ``BodySink`` (``FastInfer.open_sink``) when its
headers are parsed; every chunk is copied once into it as it arrives (a front-end's sink
is a region of its shared arena: the engine reads the tensors there), reading never
pauses for it (its bytes are already reserved), and the task wakes once, at the end.
Other requests take uvicorn's own path. Sinks the app never took (a connection closed
first) are given back when the connection closes; those it took, when it has answered. Used by ``server.uvicorn_config``.
"""
from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trtop.serve.infer_http import SINK, BodySink, FastInfer


class SinkProtocol(HttpToolsProtocol):
    """One connection; ``fast`` is set on the subclass ``protocol_for`` makes."""

    fast: FastInfer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink: BodySink | None = None  # the body being received, when it has a sink
        self._sinks: list[BodySink] = []  # sinks opened on this connection (given back at its end)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._sink = None
        if "path" not in self.scope or self.cycle is None or self.cycle.scope is not self.scope:
            return  # an upgrade: no request cycle
        sink = self.fast.open_sink(self.scope)
        if sink is not None:
            self.scope[SINK] = sink  # type: ignore[literal-required]
            self._sink = sink
            self._sinks = [s for s in self._sinks if not s.closed]
            self._sinks.append(sink)

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is None:
            super().on_body(body)
        elif not sink.write(body):  # closed (timed out) or longer than declared: the app answers
            self._sink = None

    def on_message_complete(self) -> None:
        self._sink = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for sink in self._sinks:
            if not sink.taken:  # the app closes those it took, once it is done with them
                sink.close()
        self._sinks.clear()


def protocol_for(fast: FastInfer) -> type[asyncio.Protocol]:
    """The protocol class uvicorn makes one of per connection, for this app."""
    return type("InferProtocol", (SinkProtocol,), {"fast": fast})
