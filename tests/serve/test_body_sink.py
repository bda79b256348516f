"""Request bodies read into a buffer of their declared size (``infer_http.BodySink``).

The sink is shared by the HTTP request and whoever uses the tensors in it (a front-end's
request to the engine): its room goes back only when both are done, exactly once, and bytes
that arrive after the request gave up are never written (the room may belong to another
request by then)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from trtop.serve import infer_http
from trtop.serve.arena import ALIGN, Arena
from trtop.serve.frontend import RemoteModel
from trtop.serve.errors import Overloaded
from trtop.serve.infer_http import SINK_MIN_BYTES, BodySink, FastInfer, ReusedBuffers, kept_for_small
from trtop.serve.protocol import parse_infer_request


def make_sink(size: int) -> tuple[BodySink, list[int]]:
    released: list[int] = []
    return BodySink(memoryview(bytearray(size)), lambda: released.append(1)), released


def test_chunks_fill_the_sink_in_order_and_never_past_its_size() -> None:
    sink, _ = make_sink(6)
    assert sink.write(b"abc") and sink.write(b"de") and not sink.complete
    assert not sink.write(b"fg")  # one byte too many: nothing written
    assert sink.write(b"f") and sink.complete and bytes(sink.body()) == b"abcdef"


def test_the_room_goes_back_once_when_the_request_and_the_engine_are_both_done() -> None:
    sink, released = make_sink(4)
    sink.hold()  # the request was sent to the engine
    sink.close()  # the HTTP request gave up (a timeout, a client gone) ...
    sink.close()  # ... idempotent
    assert released == []  # the engine may still read the tensors
    sink.release()  # the engine's reply
    assert released == [1]


def test_bytes_after_close_are_dropped() -> None:
    sink, released = make_sink(4)
    assert sink.write(b"ab")
    sink.close()
    assert released == [1] and sink.closed
    assert not sink.write(b"cd") and sink.filled == 2


def test_binary_inputs_are_views_of_the_sink_and_the_request_names_it() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = (b'{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"binary_data_size":32}}]}')
    sink, _ = make_sink(len(header) + x.nbytes)
    assert sink.write(header) and sink.write(x.tobytes())
    request = parse_infer_request(sink.body(), len(header), sink)
    assert request.buffer is sink
    view = request.inputs["x"]
    np.testing.assert_array_equal(view, x)
    sink.view[len(header):len(header) + 4] = np.float32(42).tobytes()  # same memory, no copy
    assert view[0, 0] == 42


class _Handle:
    name = "m"
    metrics = None

    def __init__(self, room: int) -> None:
        self.room = room
        self.given: list[int] = []

    def body_buffer(self, nbytes: int, lead: int = 0) -> tuple[memoryview, object] | None:
        if nbytes > self.room:
            return None
        self.room -= nbytes
        return memoryview(bytearray(nbytes)), lambda: self.given.append(nbytes)


def scope(path: str = "/v2/models/m/infer", length: int | None = 100_000, method: str = "POST") -> dict[str, object]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "method": method, "path": path, "headers": headers}


def test_only_large_infer_requests_within_the_limits_get_a_sink_and_it_holds_their_bytes() -> None:
    handle = _Handle(room=1_000_000)
    fast = FastInfer(None, handle, 500_000, max_inflight_bytes=250_000)  # type: ignore[arg-type]
    assert fast.open_sink(scope(path="/v2/models/other/infer")) is None
    assert fast.open_sink(scope(method="GET")) is None
    assert fast.open_sink(scope(length=None)) is None  # chunked: uvicorn's own path
    assert fast.open_sink(scope(length=SINK_MIN_BYTES - 1)) is None  # one chunk: uvicorn's path costs less
    assert fast.open_sink(scope(length=600_000)) is None  # over --max-body-mb: refused on the ordinary path
    first = fast.open_sink(scope(length=200_000))
    assert first is not None and first.size == 200_000 and fast.inflight_bytes == 200_000
    assert fast.open_sink(scope(length=100_000)) is None  # over the in-flight budget
    first.close()
    assert fast.inflight_bytes == 0 and handle.given == [200_000]
    handle.room = 10
    assert fast.open_sink(scope(length=100_000)) is None  # no room in the shared memory: ordinary path


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data)


def test_a_body_is_placed_so_that_its_tensors_start_on_a_cache_line() -> None:
    """The tensors follow the JSON header: a float tensor at an odd address runs ~6x slower in ONNX Runtime."""
    fast = FastInfer(None, _NoBodyBuffer(), 1 << 20)  # type: ignore[arg-type]
    for lead in (1, 2, 63, 64, 166, 1000):
        headers = [(b"content-length", b"100000"), (b"inference-header-content-length", str(lead).encode())]
        sink = fast.open_sink({"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": headers})
        assert sink is not None and sink.size == 100_000
        assert (_address(sink.view) + lead) % ALIGN == 0, lead
        sink.close()


def test_reused_buffers_place_each_body_for_its_own_header() -> None:
    buffers = ReusedBuffers()
    view, give_back = buffers(70_000, 3)
    assert len(view) == 70_000 and (_address(view) + 3) % ALIGN == 0
    give_back()
    again, _ = buffers(70_000, 10)  # the same buffer, placed for another header length
    assert buffers.kept_bytes == 0 and len(again) == 70_000 and (_address(again) + 10) % ALIGN == 0


def test_a_front_ends_arena_region_starts_its_tensors_on_a_cache_line() -> None:
    arena = Arena.create(1 << 20)
    try:
        front = RemoteModel("m", arena, 30.0)
        for lead in (5, 166, 64):
            got = front.body_buffer(100_000, lead)
            assert got is not None
            view, give_back = got
            assert len(view) == 100_000 and (_address(view) + lead) % ALIGN == 0
            give_back()
        assert front.body_buffer(arena.size - 32, 1) is None  # the pad counts against the room ...
        assert front.body_buffer(arena.size - 32, 0) is not None  # ... which has the body alone
    finally:
        arena.close()


class _NoBodyBuffer:
    name = "m"
    metrics = None


def test_a_request_that_fails_where_no_check_foresaw_it_is_answered_500_and_gives_its_room_back(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The direct path gave back a request's bytes, sink and in-flight count only for refusals (``ServeError``): any
    other exception left them held for good. Now any failure is answered (500, saying what failed), logged with its
    traceback, and its room goes back as for a refusal."""
    finished: list[str] = []
    handle = _Handle(room=1_000_000)
    handle.info = object()  # type: ignore[attr-defined]
    handle.metrics = SimpleNamespace(request_finished=lambda outcome, seconds: finished.append(outcome))
    fast = FastInfer(None, handle, 500_000, max_inflight_bytes=250_000)  # type: ignore[arg-type]
    sink = fast.open_sink(scope(length=100_000))
    assert sink is not None and sink.write(b"\0" * 100_000) and fast.inflight_bytes == 100_000

    def unforeseen(*args: object) -> None:
        raise RuntimeError("a check nobody wrote")

    monkeypatch.setattr(infer_http, "begin_infer", unforeseen)
    answers: list[tuple[int, bytes]] = []
    fast.direct([(b"content-length", b"100000")], b"", sink, 0.0,
                lambda status, headers, payload: answers.append((status, payload)))
    assert answers == [(500, answers[0][1])] and b"a check nobody wrote" in answers[0][1]
    assert fast.inflight_bytes == 0 and handle.given == [100_000] and finished == ["error"]
    assert "a check nobody wrote" in caplog.text and "Traceback" in caplog.text


def test_bodies_still_to_arrive_leave_room_in_the_budget_for_small_ones() -> None:
    """Bodies are counted from their declared length before they arrive: connections that declare the largest body
    and send nothing once held the whole budget, and every other request was refused meanwhile."""
    assert kept_for_small(256 << 20, 64 << 20) == 32 << 20
    assert kept_for_small(64 << 20, 64 << 20) == 0  # one largest body must fit an empty budget
    fast = FastInfer(None, _Handle(room=10_000_000), 1_000_000, max_inflight_bytes=4_000_000)  # type: ignore[arg-type]
    assert fast.kept == 500_000
    large = [fast.open_sink(scope(length=1_000_000)) for _ in range(3)]
    assert all(s is not None for s in large) and fast.inflight_bytes == 3_000_000
    assert fast.open_sink(scope(length=600_000)) is None  # larger than the kept room: it may not take it
    with pytest.raises(Overloaded):
        fast._reserve(b"600000")
    small = [fast.open_sink(scope(length=250_000)) for _ in range(4)]
    assert all(s is not None for s in small) and fast.inflight_bytes == 4_000_000
    for sink in large + small:
        assert sink is not None
        sink.close()
    assert fast.inflight_bytes == 0
