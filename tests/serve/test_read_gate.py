"""The engine's read gate: a front-end's descriptors wait in the socket while it is closed, and all
arrive once it opens, by the scheduler's word or after its longest closed time."""
from __future__ import annotations

import asyncio
import socket

from trtop.serve.channel import Channel, Message
from trtop.serve.read_gate import ReadGate


async def _pair() -> tuple[Channel, Channel, list[Message]]:
    a, b = socket.socketpair()
    got: list[Message] = []
    sender = await Channel.open(a, lambda m: None, lambda: None)
    receiver = await Channel.open(b, got.append, lambda: None)
    return sender, receiver, got


async def test_descriptors_wait_while_the_gate_is_closed_and_arrive_together_when_it_opens() -> None:
    sender, receiver, got = await _pair()
    gate = ReadGate(lambda: [receiver, None], max_closed_s=10.0)  # None: a front-end not connected yet
    gate(True)
    for i in range(5):
        sender.send(("infer", i))
        await asyncio.sleep(0.01)  # one frame each, as gRPC front-ends send them
    assert got == [] and gate.closed
    gate(False)
    await asyncio.sleep(0.05)
    assert got == [("infer", i) for i in range(5)] and not gate.closed
    sender.close()
    receiver.close()


async def test_the_gate_opens_by_itself_after_its_longest_closed_time() -> None:
    sender, receiver, got = await _pair()
    gate = ReadGate(lambda: [receiver], max_closed_s=0.05)
    gate(True)
    sender.send(("metrics", 1))  # a question must not wait for a long batch
    await asyncio.sleep(0.01)
    assert got == []
    await asyncio.sleep(0.1)
    assert got == [("metrics", 1)] and not gate.closed
    gate(False)  # the scheduler's word after the timer changes nothing
    gate(True)
    gate(True)
    assert gate.closings == 2
    gate(False)
    sender.send(("metrics", 2))
    await asyncio.sleep(0.05)
    assert got == [("metrics", 1), ("metrics", 2)]
    sender.close()
    receiver.close()
