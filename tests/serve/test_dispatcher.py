"""The engine process's end of a front-end (``dispatcher``): a real service and channel, the front-end's end
of the socketpair read raw, so what the engine wrote and when is visible."""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import pytest

from trtop.serve.arena import Arena
from trtop.serve.channel import JSON, Message
from trtop.serve.dispatcher import Dispatcher
from trtop.serve.metrics import ServerMetrics
from trtop.serve.service import BatchingConfig, InferenceService, Loaded
from trtop.serve.settings import SMALL_MODEL_RUN_S, SMALL_REQUEST_BYTES
from trtop.serve.types import Feeds, Outputs

from .conftest import Recorder


class Breakable(Recorder):
    """y = x + 1 (``Recorder``); an input holding -1 breaks it."""

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        if (feeds["x"] == -1).any():
            raise RuntimeError("poison")
        return super().run(feeds, outputs)


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
            got = peer.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if not got:  # the engine closed its end
            break
        data += got
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
async def engine() -> AsyncIterator[tuple[Dispatcher, socket.socket, Breakable]]:
    runtime = Breakable()
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


async def test_descriptors_that_came_together_still_share_a_batch(
        engine: tuple[Dispatcher, socket.socket, Breakable]) -> None:
    """Descriptors read in one callback (a frame of several, or several frames in one read) run as one batch,
    even when the run of one row is known to be short and the scheduler is idle."""
    dispatcher, peer, runtime = engine
    channel = dispatcher.channel
    assert channel is not None
    channel.data_received(frame(infer(1, 1.0)))
    await until_answered(peer, {1})
    runtime.rows.clear()
    channel.data_received(frame(infer(2, 2.0), infer(3, 3.0)))  # one frame of two
    assert written(peer) == []  # not answered in the read: they wait for the loop's turn, together
    assert await until_answered(peer, {2, 3}) == {2: 3.0, 3: 4.0}
    assert runtime.rows == [2]
    runtime.rows.clear()
    channel.data_received(frame(infer(4, 4.0)) + frame(infer(5, 5.0)))  # two frames read at once
    assert written(peer) == []
    assert await until_answered(peer, {4, 5}) == {4: 5.0, 5: 6.0}
    assert runtime.rows == [2]


async def test_a_request_that_breaks_the_backend_gets_its_error_and_the_next_one_is_served(
        engine: tuple[Dispatcher, socket.socket, Breakable]) -> None:
    dispatcher, peer, _runtime = engine
    channel = dispatcher.channel
    assert channel is not None
    channel.data_received(frame(infer(1, 1.0)))
    await until_answered(peer, {1})
    channel.data_received(frame(infer(2, -1.0)))
    error = (await until_answered(peer, {2}))[2]
    assert isinstance(error, list) and error[0] == "InferenceFailed" and "poison" in error[1]
    channel.data_received(frame(infer(3, 5.0)))
    assert await until_answered(peer, {3}) == {3: 6.0}
    stats = dispatcher.service.statistics.snapshot()
    assert stats.fail.count == 1 and stats.success.count == 2



async def test_a_ping_is_counted_out_until_its_pong_comes(engine: tuple[Dispatcher, socket.socket, Breakable]) -> None:
    dispatcher, peer, _ = engine
    channel = dispatcher.channel
    assert channel is not None
    assert dispatcher.ping() == 0  # one goes out
    await asyncio.sleep(0.01)
    assert written(peer) == [["ping", 1]]
    assert [dispatcher.ping(), dispatcher.ping()] == [1, 2]  # checks it has been out; no second ping meanwhile
    await asyncio.sleep(0.01)
    assert written(peer) == []
    channel.data_received(frame(["pong", 1]))
    assert dispatcher.ping() == 0  # answered: the next one goes out
    await asyncio.sleep(0.01)
    assert written(peer) == [["ping", 2]] and dispatcher.heard


async def last_state(dispatcher: Dispatcher, peer: socket.socket) -> Message:
    dispatcher.send_state()
    for _ in range(100):
        states = [m for m in written(peer) if m[0] == "state"]
        if states:
            return states[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("no state message")


async def test_the_state_says_what_makes_a_request_small(engine: tuple[Dispatcher, socket.socket, Breakable]) -> None:
    """A native front-end's small requests take their own bound only where they cost the engine's Python more
    than the backend: the state message says how many bytes of tensors are small for this model, 0 when its
    batch-1 run (timed at load) is not short, unless --small-group-limit was set."""
    dispatcher, peer, _ = engine
    service = dispatcher.service
    assert service.lone_run_s is not None and service.lone_run_s < SMALL_MODEL_RUN_S  # y = x + 1 on CPU
    assert (await last_state(dispatcher, peer))[5] == SMALL_REQUEST_BYTES
    service.lone_run_s = 0.005  # a model a GPU spends 5 ms on: its requests keep the backlog's rule
    assert (await last_state(dispatcher, peer))[5] == 0
    dispatcher.small_bound_set = True  # set by hand: every model's small requests take it
    assert (await last_state(dispatcher, peer))[5] == SMALL_REQUEST_BYTES


async def test_a_lone_reply_is_written_before_the_bookkeeping(
        engine: tuple[Dispatcher, socket.socket, Breakable], monkeypatch: pytest.MonkeyPatch) -> None:
    """The last answer a front-end waits for goes to it first; the queue and batch histograms and the statistics
    extension are told afterwards (the client does not wait for them): each of them finds the answer on the
    front-end's socket already. Two answers of one batch still leave in one frame."""
    dispatcher, peer, _runtime = engine
    channel, service = dispatcher.channel, dispatcher.service
    assert channel is not None
    seen: list[tuple[str, dict[int, object]]] = []

    def on_socket() -> dict[int, object]:
        try:
            data = peer.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return {}
        (length,) = struct.unpack_from("<I", data)
        return answers(json.loads(data[4:4 + length]))

    def told(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            seen.append((name, on_socket()))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for owner, name in ((service.metrics, "dequeued"), (service.metrics, "batch_done"),
                        (service.statistics, "record_success"), (service.statistics, "record_batch")):
        told(owner, name)
    channel.data_received(frame(infer(1, 1.0)))
    assert await until_answered(peer, {1}) == {1: 2.0}
    for _ in range(3):
        await asyncio.sleep(0)
    assert sorted(name for name, _ in seen) == ["batch_done", "dequeued", "record_batch", "record_success"]
    assert all(answered == {1: 2.0} for _, answered in seen), seen
    assert service.statistics.snapshot().success.count == 1
    channel.data_received(frame(infer(2, 2.0), infer(3, 3.0)))  # one batch of two
    for _ in range(200):
        if len(on_socket()) == 2:
            break
        await asyncio.sleep(0.005)
    assert on_socket() == {2: 3.0, 3: 4.0}  # both in the first frame


class Turnstile(Recorder):
    """y = x + 1, each run waiting for a turn (``turns``): batches finish when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.turns = threading.Semaphore(100)  # loading warms the model with runs of its own

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        assert self.turns.acquire(timeout=5), "no turn came"
        return super().run(feeds, outputs)


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine never got there")


async def test_a_native_frontend_holding_requests_hears_of_room_when_a_batch_taken_leaves_some() -> None:
    """A native front-end keeps its requests while it believes the engine full, and says so (``["held"]``). When
    a batch the engine takes leaves room in its next batch, that front-end is told at once (``("room", backlog)``),
    not at its next answer, which comes only when that batch is done; told once, until it says so again. A
    front-end that said nothing (a lone request's) is told nothing: the word would wake it while the engine
    computes. A Python front-end (it holds nothing) is never told."""
    runtime = Turnstile()
    service = InferenceService("m", lambda: Loaded(runtime, backend="fake"), BatchingConfig(max_batch=4),
                               ServerMetrics("m"))
    await service.start()
    scheduler = service.scheduler
    assert scheduler is not None
    while runtime.turns.acquire(blocking=False):  # from now on every batch waits for the test
        pass
    pairs = [socket.socketpair() for _ in range(2)]
    python, native = Dispatcher(0, service, ARENA), Dispatcher(1, service, ARENA, follows_regions=False)
    for d, (ours, _) in zip((python, native), pairs, strict=True):
        await d.open(ours, JSON)
    scheduler.on_room = lambda backlog: [d.room(backlog) for d in (python, native)]
    python_peer, native_peer = (peer for _, peer in pairs)
    assert python.channel is not None and native.channel is not None
    try:
        native.channel.data_received(frame(infer(7, 7.0)))  # a lone request: taken with room left, no word
        await until(lambda: scheduler.threads_busy)
        await asyncio.sleep(0.02)
        assert written(native_peer) == []
        runtime.turns.release()
        assert await until_answered(native_peer, {7}) == {7: 8.0}
        python.channel.data_received(frame(infer(1, 1.0)))  # runs at once, and waits
        await until(lambda: scheduler.threads_busy)
        native.channel.data_received(frame(*(infer(rid, rid) for rid in range(2, 7)), ["held"]))  # 1 row beyond a batch
        await until(lambda: scheduler.queued == 5)
        assert scheduler.backlog_rows == 1 and written(native_peer) == []
        runtime.turns.release()  # the first batch ends; the next takes 4 of the 5, leaving room for 3
        await until(lambda: scheduler.queued == 1)
        await asyncio.sleep(0.02)
        assert written(native_peer) == [["room", -3]]  # before any answer of its own: its batch still waits
        assert [m[0] for m in written(python_peer)] == ["done"]
        runtime.turns.release()  # that batch ends and the last request's batch starts
        got = await until_answered(native_peer, {2, 3, 4, 5})
        assert got == {rid: rid + 1.0 for rid in (2, 3, 4, 5)}
        await until(lambda: scheduler.queued == 0)
        await asyncio.sleep(0.02)
        assert written(native_peer) == []  # told once: it has said nothing since
        runtime.turns.release()
        assert await until_answered(native_peer, {6}) == {6: 7.0}
    finally:
        runtime.turns.release(100)
        for d in (python, native):
            assert d.channel is not None
            d.channel.close()
        for ours, peer in pairs:
            peer.close()
        await service.close()


@pytest.mark.parametrize("bad", [["infer", 2], ["infer", 2, 1, [["x"]], [], 5.0], [7], 5, [], ["infer"]],
                         ids=["short-infer", "bad-input", "odd-kind", "not-a-list", "empty", "no-rid"])
async def test_a_malformed_message_fails_alone_and_the_front_end_keeps_its_channel(
        engine: tuple[Dispatcher, socket.socket, Breakable], bad: object) -> None:
    """A message the engine cannot read (a front-end's bug) costs that message: its request, when its id can be
    read, is answered with an error (the server's: 500); the messages beside it in the frame, and the channel with every request in
    flight on it, go on. (It raised out of the read: the transport closed, and every request of the front-end
    was dropped.)"""
    dispatcher, peer, _runtime = engine
    peer.sendall(frame(infer(1, 1.0), bad, infer(3, 3.0)))
    got = await until_answered(peer, {1, 3})
    assert got[1] == 2.0 and got[3] == 4.0
    if isinstance(bad, list) and len(bad) > 1:
        error = got.get(2) or (await until_answered(peer, {2}))[2]
        assert isinstance(error, list) and error[0] == "InferenceFailed" and "descriptor" in error[1], error
    assert dispatcher.channel is not None and not dispatcher.channel.closed and not dispatcher.closed.is_set()
    peer.sendall(frame(infer(4, 4.0)))
    assert (await until_answered(peer, {4}))[4] == 5.0
