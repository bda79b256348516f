"""Small messages between the engine process and a front-end, over one end of a socketpair.

Each message is a tuple. Only the two processes of one pod hold the sockets (a socketpair
made by the engine process before it starts the front-end), so pickle carries nothing a
tenant wrote: request bodies travel as bytes in the shared arena, never through here.
Messages sent during one event-loop turn leave together: one pickled list (up to
``FRAME_MESSAGES`` of them) framed by a 4-byte length, in one write (under load a
front-end sends, and the engine answers, many requests per turn), so the cost per request
is a fraction of a system call and of a pickle call. ``on_close`` runs once when the peer
goes away.
Python front-ends speak pickle (``PICKLE``); the native front-end (``native/http``, Go) speaks
the same framing with JSON lists for tuples (``JSON``: bytes as base64, dataclasses as objects).
Used by ``frontend`` and ``dispatcher``.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import pickle
import socket
import struct
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
        self._buffer = bytearray()
        self._outbox: list[Message] = []
        self._flush_scheduled = False
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, on_message: Callable[[Message], None],
                   on_close: Callable[[], None], codec: Codec = PICKLE) -> Channel:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.connect_accepted_socket(lambda: cls(on_message, on_close, codec), sock)
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
        if not self.closed:
            self.closed = True
            self._on_close()

    # -- sending ----------------------------------------------------------------------
    def send(self, message: Message, now: bool = False) -> None:
        """Queue a message for the write at the end of this turn of the loop, or (``now``) write it and everything
        queued before it at once: the sender knows nothing else will join this frame soon."""
        if self.closed or self._transport is None:
            return
        self._outbox.append(message)
        if now:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False  # a flush still planned after a write ``now`` finds nothing and returns
        outbox, self._outbox = self._outbox, []
        if not outbox or self._transport is None or self.closed:
            return
        chunks = []
        for i in range(0, len(outbox), FRAME_MESSAGES):
            group = outbox[i:i + FRAME_MESSAGES]
            dumps = self._codec.dumps
            payloads = [dumps(group)]
            if len(payloads[0]) > MAX_MESSAGE and len(group) > 1:  # large inline outputs: a frame each
                payloads = [dumps([m]) for m in group]
            for payload in payloads:
                chunks += [_HEADER.pack(len(payload)), payload]
        self._transport.write(b"".join(chunks))

    def pause_reading(self) -> None:
        """Leave what the peer sends in the socket's buffer until ``resume_reading`` (``read_gate``)."""
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()
