"""Small messages between the engine process and a front-end, over one end of a socketpair.

Each message is a tuple. Only the two processes of one pod hold the sockets (a socketpair
made by the engine process before it starts the front-end), so pickle carries nothing a
tenant wrote: request bodies travel as bytes in the shared arena, never through here.
Messages sent during one event-loop turn leave together: one pickled list (up to
``FRAME_MESSAGES`` of them) framed by a 4-byte length, in one write (under load a
front-end sends, and the engine answers, many requests per turn), so the cost per request
is a fraction of a system call and of a pickle call. ``on_close`` runs once when the peer
goes away.

Writes go through a descriptor of the channel's own (a dup of the socket's) under a lock, so
``send_now`` may answer from any thread: the engine's GPU slot threads send a batch's replies
themselves the moment it is done, instead of handing them to the event loop first (a wake-up of
the loop's thread and three turns of it before the bytes left: ~0.05 ms of a lone request on
the H200 host). What the socket does not take at once waits in a backlog the loop drains, in order.
Python front-ends speak pickle (``PICKLE``); the native front-end (``native/http``, Go) speaks
the same framing with JSON lists for tuples (``JSON``: bytes as base64, dataclasses as objects).
Used by ``frontend`` and ``dispatcher``.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

_HEADER = struct.Struct("<I")
MAX_MESSAGE = 64 * 1024 * 1024  # one frame; metrics text and inline outputs stay far below this
FRAME_MESSAGES = 64  # messages per frame at most (bounds a frame of inline outputs)

Message = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one frame's list of messages becomes bytes and back."""

    dumps: Callable[[list[Message]], bytes]
    loads: Callable[[memoryview], list[Message]]


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} cannot travel to the native front-end")


PICKLE = Codec(lambda messages: pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL), pickle.loads)
JSON = Codec(lambda messages: json.dumps(messages, default=_json_default, separators=(",", ":")).encode(),
             lambda frame: json.loads(bytes(frame)))


class Channel(asyncio.Protocol):
    """Framed pickled tuples both ways; ``on_message`` is called for each in order."""

    def __init__(self, on_message: Callable[[Message], None], on_close: Callable[[], None],
                 codec: Codec = PICKLE) -> None:
        self._codec = codec
        self._on_message = on_message
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._outbox: list[Message] = []
        self._flush_scheduled = False
        # Writes: our own descriptor (the transport's may close under a writing thread), one writer at a time,
        # and the bytes the socket did not take yet (sent before anything newer).
        self._out: socket.socket | None = None
        self._lock = threading.Lock()
        self._backlog = bytearray()
        self._watching = False  # the loop waits for the socket to take the backlog
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, on_message: Callable[[Message], None],
                   on_close: Callable[[], None], codec: Codec = PICKLE) -> Channel:
        loop = asyncio.get_running_loop()
        out = socket.socket(fileno=os.dup(sock.fileno()))
        out.setblocking(False)
        _, protocol = await loop.connect_accepted_socket(lambda: cls(on_message, on_close, codec), sock)
        protocol._out, protocol._loop = out, loop
        return protocol

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > MAX_MESSAGE:
                self.close()
                return
            if end - pos - 4 < length:
                break
            messages = self._codec.loads(memoryview(buf)[pos + 4:pos + 4 + length])
            pos += 4 + length
            for message in messages:
                self._on_message(message)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut()
        if not self.closed:
            self.closed = True
            self._on_close()

    # -- sending ----------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Queue one message (on the event loop's thread); what is queued in one turn leaves in one write."""
        if self.closed or self._transport is None:
            return
        self._outbox.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_now(self, messages: list[Message]) -> None:
        """Write these messages now, from any thread (in frames, one write; after anything still unsent)."""
        if messages and not self.closed:
            self._write(self._frames(messages))

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, []
        if not outbox or self._transport is None or self.closed:
            return
        self._write(self._frames(outbox))

    def _frames(self, messages: list[Message]) -> bytes:
        chunks = []
        dumps = self._codec.dumps
        for i in range(0, len(messages), FRAME_MESSAGES):
            group = messages[i:i + FRAME_MESSAGES]
            payloads = [dumps(group)]
            if len(payloads[0]) > MAX_MESSAGE and len(group) > 1:  # large inline outputs: a frame each
                payloads = [dumps([m]) for m in group]
            for payload in payloads:
                chunks += [_HEADER.pack(len(payload)), payload]
        return b"".join(chunks)

    def _write(self, data: bytes) -> None:
        with self._lock:
            out = self._out
            if out is None:
                return
            if self._backlog:  # older bytes go first
                self._backlog += data
                return
            try:
                sent = out.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the peer is gone; connection_lost follows on the loop
                return
            if sent < len(data):
                self._backlog += memoryview(data)[sent:]
                watch = not self._watching
                self._watching = True
            else:
                watch = False
        if watch and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._watch)
            except RuntimeError:  # the loop has closed: nobody is left to read
                pass

    def _watch(self) -> None:
        if self._out is not None and self._loop is not None:
            self._loop.add_writer(self._out.fileno(), self._drain)

    def _drain(self) -> None:
        """The socket takes more: send the backlog (on the loop's thread)."""
        with self._lock:
            out = self._out
            if out is None:
                return
            try:
                sent = out.send(self._backlog)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                sent = len(self._backlog)  # the peer is gone: drop what it will never read
            del self._backlog[:sent]
            if self._backlog:
                return
            self._watching = False
            fd = out.fileno()
        assert self._loop is not None
        self._loop.remove_writer(fd)

    def _shut(self) -> None:
        """Stop writing and give our descriptor back (what is in the backlog is dropped)."""
        with self._lock:
            out, self._out = self._out, None
            self._backlog.clear()
            watching, self._watching = self._watching, False
        if out is not None:
            if watching and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_writer(out.fileno())
            out.close()

    def close(self) -> None:
        self._flush()
        self._drain_blocking()
        self._shut()
        if self._transport is not None:
            self._transport.close()

    def _drain_blocking(self, timeout_s: float = 1.0) -> None:
        """Give the backlog up to ``timeout_s`` to leave before the channel closes (a last reply, metrics)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self._backlog or self._out is None:
                    return
                try:
                    del self._backlog[:self._out.send(self._backlog)]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    return
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
