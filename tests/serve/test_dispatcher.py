"""The engine process's end of a front-end (``dispatcher``): a real service and channel, the front-end's end
of the socketpair read raw, so what the engine wrote and when is visible."""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from trtop.api.engine import TensorSpec
from trtop.serve.arena import Arena
from trtop.serve.channel import JSON, Message
from trtop.serve.dispatcher import Dispatcher
from trtop.serve.metrics import ServerMetrics
from trtop.serve.service import BatchingConfig, InferenceService, Loaded
from trtop.serve.types import Feeds, Outputs


class Doubler:
    """y = 2x; records the batch sizes it ran; an input holding -1 breaks it."""

    inputs = (TensorSpec("x", "float32", (-1, 2)),)
    outputs = (TensorSpec("y", "float32", (-1, 2)),)
    max_batch = None
    platform = "fake"

    def __init__(self) -> None:
        self.rows: list[int] = []

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        pass

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        if (feeds["x"] == -1).any():
            raise RuntimeError("poison")
        self.rows.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2}

    def close(self) -> None:
        pass


ARENA = Arena.create(1 << 16)


def infer(rid: int, value: float) -> list[object]:
    """A native front-end's descriptor of one row in the arena (at a place of its own), its output inline."""
    offset = 64 * rid
    ARENA.view(offset, "<f4", (1, 2))[:] = value
    return ["infer", rid, 1, [["x", "<f4", [1, 2], offset, None]], [["y", None]], 5.0]


def frame(*messages: object) -> bytes:
    body = json.dumps(list(messages)).encode()
    return struct.pack("<I", len(body)) + body


def written(peer: socket.socket) -> list[Message]:
    """Every message the engine has written so far (without waiting)."""
    data = b""
    while True:
        try:
            data += peer.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    out: list[Message] = []
    while data:
        (length,) = struct.unpack_from("<I", data)
        out += json.loads(data[4:4 + length])
        data = data[4 + length:]
    return out


def answers(messages: list[Message]) -> dict[int, object]:
    """Request id -> its first output value, or its error."""
    return {m[1]: m[2] if m[2] is not None else float(np.frombuffer(base64.b64decode(m[3][0][4]), np.float32)[0])
            for m in messages if m[0] == "done"}


@pytest.fixture
async def engine() -> AsyncIterator[tuple[Dispatcher, socket.socket, Doubler]]:
    runtime = Doubler()
    service = InferenceService("m", lambda: Loaded(runtime, backend="fake"), BatchingConfig(max_batch=4),
                               ServerMetrics("m"))
    await service.start()
    ours, peer = socket.socketpair()
    dispatcher = Dispatcher(0, service, ARENA)
    await dispatcher.open(ours, JSON)
    yield dispatcher, peer, runtime
    assert dispatcher.channel is not None
    dispatcher.channel.close()
    peer.close()
    await service.close()


async def until_answered(peer: socket.socket, rids: set[int]) -> dict[int, object]:
    got: dict[int, object] = {}
    for _ in range(200):
        got.update(answers(written(peer)))
        if rids <= got.keys():
            return got
        await asyncio.sleep(0.01)
    raise AssertionError(f"no answer to {rids - got.keys()}")


async def test_a_lone_request_is_answered_in_the_callback_that_read_it(
        engine: tuple[Dispatcher, socket.socket, Doubler]) -> None:
    """Once its batch size is known to be short, a descriptor that came alone (its frame's only message, nothing
    buffered behind it) runs and is answered before the read returns: no turn of the loop on its way."""
    dispatcher, peer, runtime = engine
    channel = dispatcher.channel
    assert channel is not None
    channel.data_received(frame(infer(1, 1.0)))  # batch 1's time not known yet: queued, answered later
    assert written(peer) == []
    assert await until_answered(peer, {1}) == {1: 2.0}
    channel.data_received(frame(infer(2, 3.0)))
    assert answers(written(peer)) == {2: 6.0}  # already written, no await in between
    before = dispatcher.service.statistics.snapshot()
    assert before.inference_count == 2 and before.execution_count == 2 and before.success.count == 2


async def test_descriptors_that_came_together_still_share_a_batch(
        engine: tuple[Dispatcher, socket.socket, Doubler]) -> None:
    dispatcher, peer, runtime = engine
    channel = dispatcher.channel
    assert channel is not None
    channel.data_received(frame(infer(1, 1.0)))
    await until_answered(peer, {1})
    runtime.rows.clear()
    channel.data_received(frame(infer(2, 2.0), infer(3, 3.0)))  # one frame of two
    assert written(peer) == []  # not answered in the read: they wait for the loop's turn, together
    assert await until_answered(peer, {2, 3}) == {2: 4.0, 3: 6.0}
    assert runtime.rows == [2]
    runtime.rows.clear()
    channel.data_received(frame(infer(4, 4.0)) + frame(infer(5, 5.0)))  # two frames read at once
    assert written(peer) == []
    assert await until_answered(peer, {4, 5}) == {4: 8.0, 5: 10.0}
    assert runtime.rows == [2]


async def test_a_lone_request_that_breaks_the_backend_gets_its_error_and_the_next_one_is_served(
        engine: tuple[Dispatcher, socket.socket, Doubler]) -> None:
    dispatcher, peer, _runtime = engine
    channel = dispatcher.channel
    assert channel is not None
    channel.data_received(frame(infer(1, 1.0)))
    await until_answered(peer, {1})
    channel.data_received(frame(infer(2, -1.0)))
    error = (await until_answered(peer, {2}))[2]
    assert isinstance(error, list) and error[0] == "InferenceFailed" and "poison" in error[1]
    channel.data_received(frame(infer(3, 5.0)))
    assert answers(written(peer)) == {3: 10.0}
    stats = dispatcher.service.statistics.snapshot()
    assert stats.fail.count == 1 and stats.success.count == 2


async def test_a_request_that_came_while_a_lone_one_ran_on_the_loop_ends_the_quiet(
        engine: tuple[Dispatcher, socket.socket, Doubler]) -> None:
    """Front-ends share one ``Arrivals``: a descriptor that reached another front-end's channel while a lone
    request held the loop met it, so the next descriptors take the queue (and a free slot) instead of
    running one after another on the loop, as two clients taking turns would."""
    from trtop.serve.dispatcher import Arrivals

    first, peer, _runtime = engine
    arrivals = Arrivals()
    assert first.channel is not None
    second_ours, second_peer = socket.socketpair()
    ours_again, peer_again = socket.socketpair()
    one = Dispatcher(1, first.service, ARENA, arrivals)
    two = Dispatcher(2, first.service, ARENA, arrivals)
    await one.open(ours_again, JSON)
    await two.open(second_ours, JSON)
    assert one.channel is not None and two.channel is not None
    one.channel.data_received(frame(infer(1, 1.0)))
    await until_answered(peer_again, {1})
    one.channel.data_received(frame(infer(2, 2.0)))
    assert answers(written(peer_again)) == {2: 4.0}  # quiet: answered in the callback
    second_peer.sendall(frame(infer(3, 3.0)))  # arrives at the other channel; the loop has not read it yet
    one.channel.data_received(frame(infer(4, 4.0)))
    assert answers(written(peer_again)) == {4: 8.0}  # ran on the loop; request 3 was waiting meanwhile
    one.channel.data_received(frame(infer(5, 5.0)))
    assert written(peer_again) == []  # requests met: this one is queued
    assert (await until_answered(peer_again, {5})) == {5: 10.0}
    assert (await until_answered(second_peer, {3})) == {3: 6.0}
    for d in (one, two):
        assert d.channel is not None
        d.channel.close()
    for s in (second_peer, peer_again):
        s.close()
