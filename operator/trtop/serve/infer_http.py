"""The infer route over HTTP: body -> response, and a raw ASGI layer that serves it before the app.

Per request, starlette builds a Request, matches routes, wraps the body stream and
builds a Response; for a tiny model that is most of the server's CPU. This layer answers
``POST /v2/models/<served name>[/versions/<v>]/infer`` itself (the same parse, admission,
errors and metrics as the route: ``app.infer_body``) and hands everything else to the app.
Built by ``app.build_app``.

Bodies: uvicorn gathers a body 64 KB at a time (``bytes +=`` per chunk, reading paused
and resumed, the request's task woken per chunk, then a join): for a 602 KB image that was
half of a front-end's CPU. When the HTTP protocol of ``http_protocol`` is in use, an infer
request with a ``Content-Length`` within the limits gets a ``BodySink`` as soon as its
headers are parsed: a buffer of exactly that size (in a front-end process, a region of its
shared arena, so the engine reads the tensors where the socket's bytes landed) that each
chunk is copied into once as it arrives; the request's task wakes once, when it is whole.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

import numpy as np

from trtop.serve.arena import ALIGN, pad_before
from trtop.serve.errors import (
    BadRequest, InferenceFailed, ModelNotFound, NotReady, Overloaded, PayloadTooLarge, ServeError, TimedOut,
)
from trtop.serve.handle import ModelHandle
from trtop.serve.model import VERSION, Admitted, ModelInfo
from trtop.serve.protocol import (
    Body, Held, InferRequest, decode_body, encode_infer_response, error_body, parse_infer_request,
    write_outputs_to_regions,
)
from trtop.serve.shared_memory import Registry
from trtop.serve.types import Outputs

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
STATUS: dict[type[ServeError], int] = {
    BadRequest: 400, ModelNotFound: 404, PayloadTooLarge: 413, NotReady: 503, Overloaded: 503,
    TimedOut: 504, InferenceFailed: 500,
}
JSON = "application/json"


def error_parts(exc: ServeError) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of an error answer."""
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    headers = {"content-type": JSON}
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    return status, headers, error_body(str(exc))


def begin_infer(service: ModelHandle, body: Body, header_length: str | None, encoding: str | None, limit: int,
                buffer: Held | None = None) -> tuple[InferRequest, Admitted, asyncio.Future[Outputs]]:
    """Parse and admit one infer request and queue it (ServeError at once for the caller to map); the
    future resolves with its outputs. ``buffer``: what holds the body when it must be given back after use
    (a ``BodySink``)."""
    decoded = decode_body(body, encoding, limit)
    try:
        length = None if header_length is None else int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
    regions = service.shared_memory
    parsed = parse_infer_request(decoded, length, buffer if decoded is body else None,
                                 regions if regions.enabled else None)
    admitted, future = service.infer_started(parsed)
    return parsed, admitted, future


def infer_answer(info: ModelInfo, parsed: InferRequest, admitted: Admitted, outputs: Outputs,
                 regions: Registry | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, payload) of an answered infer request; outputs asked into shared memory regions are
    written there (``regions``) and only named in the answer."""
    in_regions = None
    if any(o.region is not None for o in admitted.outputs):
        write_outputs_to_regions(regions, [(o, outputs[o.name]) for o in admitted.outputs])
        in_regions = {o.name: o.region for o in admitted.outputs if o.region is not None}
    payload, json_length = encode_infer_response(
        model=info.name, version=VERSION, request_id=parsed.id,
        outputs=[(o.name, outputs[o.name], o.binary) for o in admitted.outputs], in_regions=in_regions,
    )
    if json_length is None:
        return 200, {"content-type": JSON}, payload
    return 200, {"content-type": "application/octet-stream", "inference-header-content-length": str(json_length)}, payload


async def infer_body(service: ModelHandle, info: ModelInfo, body: Body, header_length: str | None,
                     encoding: str | None, limit: int, buffer: Held | None = None) -> tuple[int, dict[str, str], bytes]:
    """One infer request from its body to (status, headers, payload); ServeError for the caller to map."""
    parsed, admitted, future = begin_infer(service, body, header_length, encoding, limit, buffer)
    return infer_answer(info, parsed, admitted, await future, service.shared_memory)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
SINK = "trtop.body_sink"  # the scope key of a request's BodySink (set by http_protocol)
CORK = "trtop.cork"  # the scope key of what holds the response's head for its body (http_protocol.Cork)
CLIENT_GONE = "the client went away before sending the whole body"
# Smaller bodies arrive in one chunk: uvicorn's own path costs less for them than a sink.
SINK_MIN_BYTES = 64 * 1024
# How the direct path answers: (status, headers, payload), written by the HTTP protocol.
Answer = Callable[[int, dict[str, str], bytes], None]
# Where a body is read into: (a writable byte view of exactly n bytes, what gives it back), or None. Its
# second argument is the length of the JSON header before the tensors: the view is placed so that they
# start on a cache line (``arena.ALIGN``; ONNX Runtime runs a float tensor at an odd address far slower).
BodyBuffer = Callable[[int, int], "tuple[memoryview, Callable[[], None]] | None"]


class ReusedBuffers:
    """Body buffers in this process's own memory (one process serves everything), reused: a new 602 KB
    ``bytearray`` is zeroed and then faulted in page by page as the socket writes it, ~0.1 ms a request.

    A buffer is reused only once its sink is given back (the request answered and the engine done; a
    request that timed out while its batch ran gives its buffer back early, and that batch then reads the
    next request's bytes for an answer nobody gets). At most ``keep_bytes`` are kept, in buffers of the
    sizes last given back."""

    def __init__(self, keep_bytes: int = 64 << 20) -> None:
        self.keep_bytes = keep_bytes
        self.kept_bytes = 0
        self._free: dict[int, list[bytearray]] = {}

    def __call__(self, nbytes: int, lead: int = 0) -> tuple[memoryview, Callable[[], None]]:
        free = self._free.get(nbytes)
        if free:
            buffer = free.pop()
            self.kept_bytes -= nbytes
        else:
            buffer = bytearray(nbytes + ALIGN)  # room to place the tensors aligned
        pad = pad_before(np.frombuffer(buffer, np.uint8).ctypes.data, lead)
        return memoryview(buffer)[pad:pad + nbytes], functools.partial(self._give_back, nbytes, buffer)

    def _give_back(self, nbytes: int, buffer: bytearray) -> None:
        if self.kept_bytes + nbytes > self.keep_bytes:
            return  # freed with its last view
        self._free.setdefault(nbytes, []).append(buffer)
        self.kept_bytes += nbytes


class BodySink:
    """A request body written into a buffer of its declared length as the bytes arrive.

    Reference counted (``Held``): the HTTP request holds one reference until it is answered
    (``close``, idempotent) and whoever uses the tensors in it (a front-end's request to the
    engine) holds another until it is done; the buffer and the in-flight bytes it reserved
    are given back when the last one goes. Bytes that arrive after ``close`` (a body that
    timed out) are dropped, never written into a buffer given to another request."""

    __slots__ = ("view", "size", "filled", "taken", "_refs", "_closed", "_release")

    def __init__(self, view: memoryview, release: Callable[[], None]) -> None:
        self.view = view
        self.size = len(view)
        self.filled = 0
        self.taken = False  # the app has it (it closes it then); else the connection does, at its end
        self._refs = 1
        self._closed = False
        self._release = release

    @property
    def complete(self) -> bool:
        return self.filled == self.size

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, chunk: bytes) -> bool:
        """Copy the next chunk in; False (nothing written) when closed or it would overflow."""
        end = self.filled + len(chunk)
        if self._closed or end > self.size:
            return False
        self.view[self.filled:end] = chunk
        self.filled = end
        return True

    def room(self) -> memoryview:
        """Where the next bytes go (the socket reads straight into it: ``http_protocol``); empty when full or
        closed (a closed sink's room may belong to another request)."""
        return self.view[self.filled:] if not self._closed else self.view[:0]

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more were written into ``room()``."""
        self.filled += nbytes

    def body(self) -> memoryview:
        return self.view[:self.filled]

    def hold(self) -> None:
        self._refs += 1

    def release(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self._release()

    def close(self) -> None:
        """The HTTP request is done with it (answered, failed or gone); idempotent."""
        if not self._closed:
            self._closed = True
            self.release()


def kept_for_small(budget: int, max_body: int) -> int:
    """The bytes of an in-flight budget that a body larger than them may not take. A body is counted from its
    declared length before it arrives and holds it up to the body timeout: without this, a few connections that
    declare the largest body and send nothing held the whole budget, and every request meanwhile was refused as
    overloaded. A quarter of the budget, at most half the largest body, and never so much that one largest body
    cannot be taken (the native front-end keeps as much of its arena: ``keptForSmall``)."""
    return max(0, min(budget // 4, max_body // 2, budget - max_body - 2 * ALIGN))


def unforeseen(exc: Exception) -> InferenceFailed:
    """A request that failed where no check foresaw it: logged with its traceback (a bug to fix) and answered
    500 with what failed, its resources given back by the caller as for any refusal."""
    log.error("an infer request failed: %s", exc, exc_info=exc)
    return InferenceFailed(f"the request could not be handled: {exc}")


class FastInfer:
    def __init__(self, app: ASGIApp, service: ModelHandle, max_body_bytes: int, *,
                 max_inflight_bytes: int = 0, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.service = service
        self.limit = max_body_bytes
        # Bodies being read or served by this process at once (declared lengths): a request that would
        # pass the budget is refused before its body is read, so memory stays bounded however many
        # clients send at once. 0: no budget.
        self.inflight_budget = max_inflight_bytes
        self.inflight_bytes = 0
        self.kept = kept_for_small(max_inflight_bytes, max_body_bytes)
        self.body_timeout_s = body_timeout_s
        base = f"/v2/models/{service.name}"
        self.paths = frozenset({base + "/infer", f"{base}/versions/{VERSION}/infer"})
        # The model handle's shared memory where it has some (a front-end), else this process's.
        self.body_buffer: BodyBuffer = getattr(service, "body_buffer", None) or ReusedBuffers()

    def open_sink(self, scope: Mapping[str, Any]) -> BodySink | None:
        """A sink for an infer request's body, sized from its Content-Length, reserved against the
        in-flight budget; None when the request does not qualify (not ours, no or a bad length, over a
        limit, no room): it then takes the ordinary path, which refuses it where it must."""
        if scope.get("method") != "POST" or scope.get("path") not in self.paths:
            return None
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is None or not declared.isdigit():
            return None
        length = int(declared)
        if length < SINK_MIN_BYTES or length > self.limit or not self._fits(length):
            return None
        lead = next((v for k, v in scope["headers"] if k == b"inference-header-content-length"), b"")
        got = self.body_buffer(length, int(lead) if lead.isdigit() else 0)
        if got is None:
            return None
        view, give_back = got
        self.inflight_bytes += length

        def release() -> None:
            self.inflight_bytes -= length
            give_back()

        return BodySink(view, release)

    def takes_directly(self, scope: Mapping[str, Any]) -> bool:
        """An infer request ``direct`` can serve: its body has a sink (``open_sink``), or is small and of a
        declared length (it is then whole in uvicorn's buffer); not a chunked one."""
        if scope.get("method") != "POST" or scope.get("path") not in self.paths:
            return False
        if scope.get(SINK) is not None:
            return True
        declared = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
            elif key == b"transfer-encoding":
                return False
        return declared is not None and declared.isdigit() and int(declared) < SINK_MIN_BYTES

    def body_late(self) -> BadRequest:
        return BadRequest(f"the body did not arrive within {self.body_timeout_s:g}s")

    def __getattr__(self, name: str) -> Any:  # tests reach the starlette app's state, router ...
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        metrics = self.service.metrics
        metrics.request_started()
        outcome = "success"
        sink: BodySink | None = scope.get(SINK)
        declared, header_length, encoding = infer_headers(scope["headers"])
        reserved = 0
        try:
            if sink is not None:
                if sink.closed:  # the connection closed before this task started
                    raise NotReady(CLIENT_GONE)
                sink.taken = True
                body: Body = await self._fill(receive, sink)
            else:
                reserved = self._reserve(declared)
                try:
                    async with asyncio.timeout(self.body_timeout_s):  # a timer, not a task per request
                        body = await read_body(receive, self.limit)
                except TimeoutError:
                    raise self.body_late() from None
            info = self.service.info
            if info is None:
                raise NotReady(f"model {self.service.name!r} is {self.service.state}")
            status, headers, payload = await infer_body(self.service, info, body, header_length, encoding, self.limit,
                                                        sink)
        except ServeError as exc:
            outcome = exc.outcome
            status, headers, payload = error_parts(exc)
        except Exception as exc:  # as in ``direct``: a 500 that says what failed, not the ASGI server's bare one
            failed = unforeseen(exc)
            outcome = failed.outcome
            status, headers, payload = error_parts(failed)
        finally:
            self.inflight_bytes -= reserved
            if sink is not None:
                sink.close()
            metrics.request_finished(outcome, time.perf_counter() - started)
        raw = [(b"content-length", str(len(payload)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        cork = scope.get(CORK)
        if cork is not None:
            cork.hold()  # head and body in one write
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    def direct(self, headers: Iterable[tuple[bytes, bytes]], body: Body, sink: BodySink | None, started: float,
               answer: Answer) -> None:
        """The infer route without a task (``http_protocol`` calls it once the body is whole, after
        ``metrics.request_started``): parse, admit and queue now; answer from the outputs' callback, or
        at once where the run was inline or the request is refused. ``answer`` is called exactly once.
        The same checks, errors and metrics as ``__call__``, which serves what this path does not take."""
        declared, header_length, encoding = infer_headers(headers)
        reserved = 0

        def finish(status: int, hdrs: dict[str, str], payload: bytes, outcome: str) -> None:
            self.inflight_bytes -= reserved
            if sink is not None:
                sink.close()
            self.service.metrics.request_finished(outcome, time.perf_counter() - started)
            answer(status, hdrs, payload)

        try:
            if sink is not None:
                sink.taken = True
                if not sink.complete:
                    raise BadRequest(f"the body ended after {sink.filled} of its {sink.size} bytes")
                body = sink.body()
            else:
                reserved = self._reserve(declared)
            info = self.service.info
            if info is None:
                raise NotReady(f"model {self.service.name!r} is {self.service.state}")
            parsed, admitted, future = begin_infer(self.service, body, header_length, encoding, self.limit, sink)
        except ServeError as exc:
            finish(*error_parts(exc), exc.outcome)
            return
        except Exception as exc:  # its bytes, body and in-flight count are given back here too: left held, each
            # such request shrank the server's budget for good (--max-inflight-mb; then every request was refused)
            failed = unforeseen(exc)
            finish(*error_parts(failed), failed.outcome)
            return

        def done(f: asyncio.Future[Outputs]) -> None:
            try:
                if f.cancelled():
                    raise NotReady("the request was cancelled (the server is stopping)")
                status, hdrs, payload = infer_answer(info, parsed, admitted, f.result(), self.service.shared_memory)
            except ServeError as exc:
                finish(*error_parts(exc), exc.outcome)
            except Exception as exc:  # encoding an answer the backend produced; logged, answered 500
                log.error("answering an infer request failed: %s", exc, exc_info=exc)
                failed = InferenceFailed(f"the answer could not be built: {exc}")
                finish(*error_parts(failed), failed.outcome)
            else:
                finish(status, hdrs, payload, "success")

        if future.done():  # run inline, on this very callback
            done(future)
        else:
            future.add_done_callback(done)

    def _fits(self, length: int) -> bool:
        """Whether a body of ``length`` bytes may be counted in flight now: within the budget, and into the room
        kept for small bodies (``kept_for_small``) only if it is one of them."""
        if not self.inflight_budget:
            return True
        room = self.inflight_budget - self.inflight_bytes
        return length <= room and (length <= self.kept or room - length >= self.kept)

    def _reserve(self, declared: bytes | None) -> int:
        """The in-flight bytes a body read through ``receive`` holds (refused before reading when it cannot fit)."""
        length = int(declared) if declared is not None and declared.isdigit() else self.limit
        if length > self.limit:
            raise PayloadTooLarge(f"the body is {length} bytes; this server accepts at most {self.limit} "
                                  "(raise --max-body-mb or send smaller batches)")
        if not self._fits(length):
            raise Overloaded(f"this server holds {self.inflight_bytes} bytes of requests in flight and its limit is "
                             f"{self.inflight_budget} (--max-inflight-mb); retry shortly or add replicas")
        self.inflight_bytes += length
        return length

    async def _fill(self, receive: Receive, sink: BodySink) -> memoryview:
        """The body the protocol writes into ``sink`` (its limits were checked when it was opened)."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:  # woken once, at the end of the body (or when the client goes away)
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise NotReady(CLIENT_GONE)
                    chunk = message.get("body", b"")
                    if chunk and not sink.write(chunk):
                        raise BadRequest("the body is longer than its Content-Length")
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise self.body_late() from None
        if not sink.complete:
            raise BadRequest(f"the body ended after {sink.filled} of its {sink.size} bytes")
        return sink.body()


def infer_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, str | None, str | None]:
    """(Content-Length, Inference-Header-Content-Length, Content-Encoding) of an infer request's headers."""
    declared = header_length = encoding = None
    for key, value in headers:
        if key == b"content-length":
            declared = value
        elif key == b"inference-header-content-length":
            header_length = value.decode("latin-1")
        elif key == b"content-encoding":
            encoding = value.decode("latin-1")
    return declared, header_length, encoding


async def read_body(receive: Receive, limit: int,
                    advice: str = "raise --max-body-mb or send smaller batches") -> bytes:
    """The whole body from ASGI ``receive``, refusing at the first byte past ``limit`` (``advice``: what the
    client can do about it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise NotReady(CLIENT_GONE)
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes; {advice}")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
