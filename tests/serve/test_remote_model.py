"""A front-end's view of the model (``frontend.RemoteModel``) against a scripted engine: its replies.

The engine writes a request's outputs into arena regions the front-end reserved; the front-end frees
those regions as soon as the reply arrives, and another request of the same turn of the event loop
may be given them at once. So the outputs must be taken out before that, not when the waiting
coroutine resumes.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.serve.arena import Arena
from trtop.serve.frontend import RemoteModel
from trtop.serve.model import ModelInfo
from trtop.serve.protocol import InferRequest

WIDE = 2048  # floats per output row: 8 KB, over the inline limit, so the output has an arena region


class Captured:
    closed = False

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)


def model() -> tuple[RemoteModel, Captured]:
    remote = RemoteModel("m", Arena.create(1 << 20), 5.0)
    info = ModelInfo(name="m", platform="onnxruntime_onnx", backend="onnxruntime",
                     inputs=(TensorSpec("x", "float32", (-1, 4)),), outputs=(TensorSpec("y", "float32", (-1, WIDE)),),
                     max_batch=8)
    remote.on_message(("state", "ready", "", info))
    channel = Captured()
    remote.attach(channel)  # type: ignore[arg-type]
    return remote, channel


def request(value: float) -> InferRequest:
    return InferRequest(id=None, inputs={"x": np.full((1, 4), value, np.float32)}, outputs=None, binary_output=True,
                        timeout_s=None)


async def test_outputs_are_taken_before_their_region_is_given_to_the_next_request() -> None:
    remote, channel = model()
    task = asyncio.ensure_future(remote.infer(request(1.0)))
    await asyncio.sleep(0)  # the request goes out
    (kind, rid, rows, _inputs, outputs, _timeout), = channel.sent
    assert kind == "infer" and rows == 1
    (name, (offset, shape)), = outputs
    remote._arena.view(offset, "float32", shape)[:] = 7.0  # the engine writes the answer in place
    remote.on_message(("done", rid, None, [(name, "<f4", shape, offset, None)]))
    # In the same turn, before the waiting coroutine runs, the next request gets the freed region.
    _admitted, nxt = remote.infer_started(request(2.0))
    (_, _, _, _, (( _, (reused, _)),), _) = channel.sent[-1]
    assert reused == offset  # the allocator hands the same room out again
    remote._arena.view(reused, "float32", shape)[:] = -1.0
    _, outputs_got = await task
    assert outputs_got["y"].shape == (1, WIDE) and np.all(outputs_got["y"] == 7.0)
    nxt.cancel()


async def test_an_engine_error_reaches_the_request_and_frees_its_regions() -> None:
    remote, channel = model()
    _admitted, future = remote.infer_started(request(1.0))
    (_, rid, _, _, ((_, (offset, _)),), _), = channel.sent
    remote.on_message(("done", rid, ("Overloaded", "the queue is full", 1.0), []))
    try:
        await future
    except Exception as exc:  # the engine's error type, rebuilt
        assert type(exc).__name__ == "Overloaded" and "queue is full" in str(exc)
    else:
        raise AssertionError("the engine's error was not raised")
    _admitted, again = remote.infer_started(request(1.0))
    assert channel.sent[-1][4][0][1][0] == offset  # the region was given back
    again.cancel()
