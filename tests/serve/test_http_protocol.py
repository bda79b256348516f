"""The connection side of the infer route (``http_protocol``): what reaches the socket, and how reads are made.

Reading infer bodies into their sink past the parser runs against a real server in ``test_frontends``
(back-to-back and pipelined bodies, late bytes after a timeout); here the parts that need no server."""
from __future__ import annotations

import asyncio

from trtop.serve.http_protocol import BufferedReads, Cork, protocol_for


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.sent.append(bytes(data))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.writes += 1
        self.sent.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_held_head_goes_out_with_the_body_in_one_write_and_other_writes_pass_through() -> None:
    transport = _Transport()
    cork = Cork(transport)  # type: ignore[arg-type]
    cork.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # not held: passes at once
    cork.hold()
    cork.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.sent == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # the head waits for its body
    cork.write(b"body")
    assert transport.sent[1:] == [b"HTTP/1.1 200 OK\r\n\r\nbody"] and transport.writes == 2


def test_a_held_head_is_not_lost_when_the_connection_closes_before_a_body() -> None:
    transport = _Transport()
    cork = Cork(transport)  # type: ignore[arg-type]
    cork.hold()
    cork.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    cork.close()
    assert transport.sent == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"] and transport.closed


def test_the_event_loop_sees_a_buffered_protocol_not_an_asyncio_protocol() -> None:
    """uvloop reads into the protocol's own buffer only for a protocol that is not an ``asyncio.Protocol``
    (uvicorn's is one): the class uvicorn is given must be a bare ``BufferedProtocol``."""
    cls = protocol_for(object())  # type: ignore[arg-type]
    assert issubclass(cls, BufferedReads) and issubclass(cls, asyncio.BufferedProtocol)
    assert not issubclass(cls, asyncio.Protocol)
