"""The infer route over HTTP: body -> response, and a raw ASGI layer that serves it before the app.

Per request, starlette builds a Request, matches routes, wraps the body stream and
builds a Response; for a tiny model that is most of the server's CPU. This layer answers
``POST /v2/models/<served name>[/versions/<v>]/infer`` itself (the same parse, admission,
errors and metrics as the route: ``app.infer_body``) and hands everything else to the app.
Built by ``app.build_app``.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from trtop.serve.errors import (
    BadRequest, InferenceFailed, ModelNotFound, NotReady, Overloaded, PayloadTooLarge, ServeError, TimedOut,
)
from trtop.serve.handle import ModelHandle
from trtop.serve.model import VERSION, ModelInfo
from trtop.serve.protocol import decode_body, encode_infer_response, error_body, parse_infer_request

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


async def infer_body(service: ModelHandle, info: ModelInfo, body: bytes, header_length: str | None,
                     encoding: str | None, limit: int) -> tuple[int, dict[str, str], bytes]:
    """One infer request from its body to (status, headers, payload); ServeError for the caller to map."""
    body = decode_body(body, encoding, limit)
    try:
        length = None if header_length is None else int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
    parsed = parse_infer_request(body, length)
    admitted, outputs = await service.infer(parsed)
    payload, json_length = encode_infer_response(
        model=info.name, version=VERSION, request_id=parsed.id,
        outputs=[(o.name, outputs[o.name], o.binary) for o in admitted.outputs],
    )
    if json_length is None:
        return 200, {"content-type": JSON}, payload
    return 200, {"content-type": "application/octet-stream", "inference-header-content-length": str(json_length)}, payload


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
        self.body_timeout_s = body_timeout_s
        base = f"/v2/models/{service.name}"
        self.paths = frozenset({base + "/infer", f"{base}/versions/{VERSION}/infer"})

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
        reserved = 0
        try:
            header_length = encoding = declared = None
            for key, value in scope["headers"]:
                if key == b"content-length":
                    declared = value
                elif key == b"inference-header-content-length":
                    header_length = value.decode("latin-1")
                elif key == b"content-encoding":
                    encoding = value.decode("latin-1")
            length = int(declared) if declared is not None and declared.isdigit() else self.limit
            if length > self.limit:
                raise PayloadTooLarge(f"the body is {length} bytes; this server accepts at most {self.limit} "
                                      "(raise --max-body-mb or send smaller batches)")
            if self.inflight_budget and self.inflight_bytes + length > self.inflight_budget:
                raise Overloaded(f"this server holds {self.inflight_bytes} bytes of requests in flight and its limit is "
                                 f"{self.inflight_budget} (--max-inflight-mb); retry shortly or add replicas")
            self.inflight_bytes += length
            reserved = length
            try:
                async with asyncio.timeout(self.body_timeout_s):  # a timer, not a task per request
                    body = await read_body(receive, self.limit)
            except TimeoutError:
                raise BadRequest(f"the body did not arrive within {self.body_timeout_s:g}s") from None
            info = self.service.info
            if info is None:
                raise NotReady(f"model {self.service.name!r} is {self.service.state}")
            status, headers, payload = await infer_body(self.service, info, body, header_length, encoding, self.limit)
        except ServeError as exc:
            outcome = exc.outcome
            status, headers, payload = error_parts(exc)
        finally:
            self.inflight_bytes -= reserved
            metrics.request_finished(outcome, time.perf_counter() - started)
        raw = [(b"content-length", str(len(payload)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body from ASGI ``receive``, refusing at the first byte past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise NotReady("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes; raise --max-body-mb or send smaller batches")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
