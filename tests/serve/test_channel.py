"""The engine <-> front-end channel: messages of one loop turn leave in frames, arrive whole and in order."""
from __future__ import annotations

import asyncio
import socket
import threading

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


async def test_messages_sent_from_other_threads_arrive_whole_and_in_order_when_the_socket_is_full() -> None:
    """``send_now`` writes from any thread; what the socket does not take (a peer slow to read) waits in
    order behind what is already waiting, and leaves when the peer reads, with the loop's own sends."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    got: list[Message] = []
    arrived = asyncio.Event()
    big = b"z" * 50_000  # a few of these fill the socket's buffers
    per_thread, threads = 20, 3
    total = per_thread * threads + 1

    def on_message(message: Message) -> None:
        got.append(message)
        if len(got) == total:
            arrived.set()

    sender = await Channel.open(a, lambda m: None, lambda: None)

    def write(t: int) -> None:
        for i in range(per_thread):
            sender.send_now([("done", t, i, big)])

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)  # nobody reads yet: the threads are not held up by a full socket
    sender.send(("state", "ready"))  # the loop's own send goes behind them
    receiver = await Channel.open(b, on_message, lambda: None)
    await asyncio.wait_for(arrived.wait(), 10)
    for t in range(threads):
        assert [m[2] for m in got if m[1] == t and m[0] == "done"] == list(range(per_thread))
    assert all(m[3] == big for m in got if m[0] == "done") and got[-1] == ("state", "ready")
    sender.close()
    receiver.close()
