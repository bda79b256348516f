"""The engine <-> front-end channel: messages of one loop turn leave in frames, arrive whole and in order."""
from __future__ import annotations

import asyncio
import socket

import pytest

from trtop.serve.channel import FRAME_MESSAGES, Channel, Message


async def test_messages_sent_in_one_turn_arrive_in_order_across_frames() -> None:
    a, b = socket.socketpair()
    got: list[Message] = []
    arrived = asyncio.Event()
    count = FRAME_MESSAGES * 2 + 5  # three frames

    def on_message(message: Message) -> None:
        got.append(message)
        if len(got) == count:
            arrived.set()

    sender = await Channel.open(a, lambda m: None, lambda: None)
    receiver = await Channel.open(b, on_message, lambda: None)
    for i in range(count):
        sender.send(("infer", i, b"x" * (i % 7)))
    await asyncio.wait_for(arrived.wait(), 5)
    assert got == [("infer", i, b"x" * (i % 7)) for i in range(count)]
    sender.close()
    receiver.close()


async def test_the_peer_going_away_is_told_once() -> None:
    a, b = socket.socketpair()
    closed: list[int] = []
    gone = asyncio.Event()

    def on_close() -> None:
        closed.append(1)
        gone.set()

    sender = await Channel.open(a, lambda m: None, lambda: None)
    await Channel.open(b, lambda m: None, on_close)
    sender.close()
    await asyncio.wait_for(gone.wait(), 5)
    await asyncio.sleep(0.05)
    assert closed == [1]


async def test_messages_too_large_to_share_a_frame_travel_in_frames_of_their_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trtop.serve import channel

    monkeypatch.setattr(channel, "MAX_MESSAGE", 1000)
    a, b = socket.socketpair()
    got: list[Message] = []
    arrived = asyncio.Event()

    def on_message(message: Message) -> None:
        got.append(message)
        if len(got) == 3:
            arrived.set()

    sender = await Channel.open(a, lambda m: None, lambda: None)
    receiver = await Channel.open(b, on_message, lambda: None)
    for i in range(3):
        sender.send(("done", i, b"y" * 600))  # each fits a frame, two do not
    await asyncio.wait_for(arrived.wait(), 5)
    assert [m[1] for m in got] == [0, 1, 2] and not receiver.closed
    sender.close()
    receiver.close()


async def test_a_message_sent_now_leaves_at_once_with_those_queued_before_it() -> None:
    """``send(now=True)``: one frame of everything queued so far is on the socket when it returns; the flush that
    was planned for the end of the turn then finds nothing and writes nothing."""
    a, b = socket.socketpair()
    b.setblocking(False)
    sender = await Channel.open(a, lambda m: None, lambda: None)
    sender.send(("done", 1))
    with pytest.raises(BlockingIOError):
        b.recv(1 << 16)  # queued for the end of the turn
    sender.send(("done", 2), now=True)
    first = b.recv(1 << 16)
    await asyncio.sleep(0.01)  # the planned flush has run
    with pytest.raises(BlockingIOError):
        b.recv(1 << 16)
    got: list[Message] = []
    receiver = Channel(got.append, lambda: None)
    receiver.data_received(first)
    assert got == [("done", 1), ("done", 2)]
    sender.close()
    b.close()
