"""The engine process's end of a front-end (``dispatcher.Dispatcher``) on a real service and socketpair.

A batch run on a compute thread is answered from that thread: the reply leaves while the event loop
is still busy elsewhere. Each request gets exactly one reply, also when it times out while its batch
runs.
"""
from __future__ import annotations

import asyncio
import pickle
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.serve.arena import Arena
from trtop.serve.dispatcher import Dispatcher
from trtop.serve.metrics import ServerMetrics
from trtop.serve.service import BatchingConfig, InferenceService, Loaded
from trtop.serve.types import Feeds, Outputs


class Gated:
    """y = x + 1, each run at least 2 ms (never 'short': it runs on a compute thread); held while ``gate`` is clear."""

    inputs = (TensorSpec("x", "float32", (-1, 2)),)
    outputs = (TensorSpec("y", "float32", (-1, 2)),)
    max_batch = None
    platform = "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        pass

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        self.started.set()
        self.gate.wait(10)
        time.sleep(0.002)
        return {"y": feeds["x"] + 1}

    def close(self) -> None:
        pass


def send(sock: socket.socket, *messages: Any) -> None:
    payload = pickle.dumps(list(messages))
    sock.sendall(struct.pack("<I", len(payload)) + payload)


def receive(sock: socket.socket, timeout_s: float) -> list[Any]:
    """One frame's messages (blocking, on the calling thread); [] when none comes in time."""
    sock.settimeout(timeout_s)
    try:
        head = sock.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return []
        (length,) = struct.unpack("<I", head)
        return list(pickle.loads(sock.recv(length, socket.MSG_WAITALL)))
    except TimeoutError:
        return []


def infer(rid: int, value: float, timeout_s: float = 5.0) -> tuple[Any, ...]:
    x = np.full((1, 2), value, np.float32)
    return ("infer", rid, 1, [("x", "<f4", (1, 2), -1, x.tobytes())], [("y", None)], timeout_s)


async def started(rt: Gated) -> tuple[InferenceService, Dispatcher, socket.socket]:
    """A started service, its dispatcher on one end of a socketpair, and the front-end's end (raw)."""
    svc = InferenceService("m", lambda: Loaded(rt, backend="fake"), BatchingConfig(max_batch=4), ServerMetrics("m"))
    await svc.start()
    engine_end, frontend_end = socket.socketpair()
    dispatcher = Dispatcher(0, svc, Arena.create(1 << 16))
    await dispatcher.open(engine_end)
    return svc, dispatcher, frontend_end


def outputs_of(reply: tuple[Any, ...]) -> np.ndarray:
    (_name, dtype, shape, _offset, data), = reply[3]
    return np.frombuffer(data, dtype=dtype).reshape(shape)


async def test_a_batch_on_a_compute_thread_is_answered_while_the_event_loop_is_busy() -> None:
    rt = Gated()
    svc, dispatcher, frontend_end = await started(rt)
    rt.gate.clear()
    rt.started.clear()
    send(frontend_end, infer(7, 2.0))
    while not rt.started.is_set():  # the descriptor is read and its batch handed to a compute thread
        await asyncio.sleep(0.001)
    rt.gate.set()
    frame = receive(frontend_end, 5.0)  # the event loop is held right here: only the compute thread can answer
    assert [m[:3] for m in frame] == [("done", 7, None)]
    np.testing.assert_array_equal(outputs_of(frame[0]), np.full((1, 2), 3.0, np.float32))
    await dispatcher.wait_idle()  # the request's future resolves on the loop too, without a second reply
    assert receive(frontend_end, 0.1) == []
    assert svc.statistics.snapshot().success.count >= 1
    dispatcher.channel.close()  # type: ignore[union-attr]
    frontend_end.close()
    await svc.close()


async def test_a_request_that_times_out_while_its_batch_runs_gets_one_reply() -> None:
    rt = Gated()
    svc, dispatcher, frontend_end = await started(rt)
    rt.gate.clear()
    send(frontend_end, infer(1, 1.0, timeout_s=0.05))
    replies: list[Any] = []
    deadline = time.monotonic() + 5
    while not replies and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        replies = await asyncio.to_thread(receive, frontend_end, 0.01)
    (kind, rid, error, outputs, _backlog), = replies
    assert (kind, rid, outputs) == ("done", 1, None) and error[0] == "TimedOut"
    rt.gate.set()  # the batch ends now: its outputs have nobody left to go to
    await dispatcher.wait_idle()
    await asyncio.sleep(0.05)
    assert await asyncio.to_thread(receive, frontend_end, 0.2) == []
    send(frontend_end, infer(2, 5.0))  # the dispatcher still serves
    frame = await asyncio.to_thread(receive, frontend_end, 5.0)
    assert [m[:3] for m in frame] == [("done", 2, None)] and outputs_of(frame[0])[0, 0] == 6.0
    dispatcher.channel.close()  # type: ignore[union-attr]
    frontend_end.close()
    await svc.close()
