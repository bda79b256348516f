"""A front-end's view of the model (``frontend.RemoteModel``) against a scripted engine: its replies.

The engine writes a request's outputs into arena regions the front-end reserved; the front-end frees
those regions as soon as the reply arrives, and another request of the same turn of the event loop
may be given them at once. So the outputs must be taken out before that, not when the waiting
coroutine resumes.
"""
from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import Any

import numpy as np
import pytest

from trtop.api.engine import TensorSpec
from trtop.serve.arena import Arena
from trtop.serve import frontend
from trtop.serve.errors import TimedOut
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


def _offset_of_next(remote: RemoteModel, channel: Captured) -> tuple[int, asyncio.Future[Any]]:
    """The output region the next request is given (and its future)."""
    _admitted, future = remote.infer_started(request(0.0))
    return channel.sent[-1][4][0][1][0], future


async def test_an_answer_that_never_comes_times_out_and_its_regions_wait_for_a_late_one(monkeypatch: Any) -> None:
    monkeypatch.setattr(frontend, "ANSWER_GRACE_S", 2.0)
    remote, channel = model()
    timed = InferRequest(id=None, inputs={"x": np.ones((1, 4), np.float32)}, outputs=None, binary_output=True,
                         timeout_s=0.5)
    _admitted, future = remote.infer_started(timed)
    (_, rid, _, _, ((name, (offset, shape)),), timeout), = channel.sent
    sent = remote._waiting[rid].sent_ns
    assert timeout == 0.5
    assert remote.expire(sent + int(2.49e9)) == 0 and not future.done()  # its timeout and the grace not yet past
    assert remote.expire(sent + int(2.51e9)) == 1
    with pytest.raises(TimedOut, match="did not answer within its timeout and 2s more"):
        await future
    assert remote.expire(sent + int(60e9)) == 0 and remote.lost == 1  # given up once
    assert "answers lost 1, still unanswered 1" in remote.state_line()
    other, pending = _offset_of_next(remote, channel)
    assert other != offset  # the engine may still write there: its region is not handed out again
    pending.cancel()
    remote.on_message(("done", rid, None, [(name, "<f4", shape, offset, None)]))  # late, after all
    again, pending = _offset_of_next(remote, channel)
    assert again == offset  # the late answer gave it back
    pending.cancel()


async def test_a_question_the_engine_never_answers_times_out(monkeypatch: Any) -> None:
    monkeypatch.setattr(frontend, "ANSWER_GRACE_S", 0.0)
    remote, channel = model()
    asked = asyncio.ensure_future(remote.statistics_snapshot())
    await asyncio.sleep(0)
    (kind, _rid), = channel.sent
    assert kind == "statistics" and "requests awaiting the engine 1 (the oldest sent" in remote.state_line()
    assert remote.expire(time.perf_counter_ns()) == 0  # the server's timeout (5 s here) first
    assert remote.expire(time.perf_counter_ns() + int(5.1e9)) == 1
    with pytest.raises(TimedOut):
        await asked


async def test_the_report_loop_gives_up_on_lost_answers_and_asks_the_engine_for_its_state(
        monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(frontend, "ANSWER_GRACE_S", 0.0)
    monkeypatch.setattr(frontend, "REPORT_INTERVAL_S", 0.001)
    monkeypatch.setattr(frontend, "LOST_CHECK_EVERY", 2)
    remote, channel = model()
    signalled: list[int] = []
    # The engine is this process's parent in a pod; here the signal goes to pytest's parent, so it is caught
    # where it is sent: os.kill is the boundary.
    monkeypatch.setattr(frontend.os, "kill", lambda pid, sig: signalled.append(sig))
    futures = [remote.infer_started(InferRequest(id=None, inputs={"x": np.ones((1, 4), np.float32)}, outputs=None,
                                                 binary_output=True, timeout_s=0.05))[1] for _ in range(3)]
    reporter = asyncio.ensure_future(frontend._report(remote))
    try:
        done, _ = await asyncio.wait(futures, timeout=5)
    finally:
        reporter.cancel()
    assert len(done) == 3 and all(isinstance(f.exception(), TimedOut) for f in done)
    assert signalled == [signal.SIGUSR1]  # once, however many were lost
    assert remote.lost == 3
    # The state is dumped at the first check that finds an answer lost: the three deadlines are microseconds
    # apart, so that check may have found one, two or all three of them (CI once saw one, then two).
    assert "state: Python front-end" in caplog.text and re.search(r"answers lost [123]\b", caplog.text)
