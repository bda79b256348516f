"""HTTP routes of the Open Inference Protocol v2 (KServe v2 / Triton HTTP) plus ``/metrics``.

Thin: read the body within its limit, call ``protocol`` to parse, the service to infer,
``protocol`` to encode; map domain errors to status codes (the only place that knows
them) with a JSON ``{"error": ...}`` body. Built by ``server``; tests may mount it in-process.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trtop.serve.errors import BadRequest, ServeError
from trtop.serve.handle import SERVER_NAME, check_model, extensions
from trtop.serve.model import VERSION, ModelInfo, model_config, model_metadata
from trtop.serve.protocol import error_body
from trtop.serve.infer_http import HEADER_LENGTH, JSON, FastInfer, error_parts, infer_body, read_body
from trtop.serve.handle import ModelHandle
from trtop.serve.shared_memory import CUDA_SHM_MESSAGE, spec_of
from trtop.serve.statistics import statistics_json
from trtop.versions import TRTOP_VERSION

REGISTRATION_MAX_BYTES = 64 * 1024  # a region's registration is a few dozen bytes of JSON


def json_response(doc: Mapping[str, Any] | list[Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")), status, headers, media_type=JSON)


def error_response(exc: ServeError) -> Response:
    status, headers, body = error_parts(exc)
    return Response(body, status, headers)


def build_app(
    service: ModelHandle, *, max_body_bytes: int, max_inflight_bytes: int = 0, body_timeout_s: float = 30.0,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    metrics = service.metrics

    def model_of(request: Request) -> ModelInfo:
        info = check_model(service, request.path_params["model"], request.path_params.get("version"))
        assert info is not None
        return info

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        if service.ready:
            return json_response({"ready": True})
        return json_response({"ready": False, "error": f"model {service.name!r} is {service.state}"}, 503)

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": SERVER_NAME, "version": TRTOP_VERSION, "extensions": extensions(service)})

    async def metadata(request: Request) -> Response:
        try:
            return json_response(model_metadata(model_of(request)))
        except ServeError as exc:
            return error_response(exc)

    async def config(request: Request) -> Response:
        try:
            return json_response(model_config(model_of(request)))
        except ServeError as exc:
            return error_response(exc)

    async def model_ready(request: Request) -> Response:
        try:
            model_of(request)
        except ServeError as exc:
            return error_response(exc)
        return json_response({"name": service.name, "ready": service.ready}, 200 if service.ready else 503)

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        metrics.request_started()
        outcome = "success"
        try:
            info = model_of(request)
            body = await read_body(request.receive, max_body_bytes)
            status, headers, payload = await infer_body(
                service, info, body, request.headers.get(HEADER_LENGTH), request.headers.get("content-encoding"),
                max_body_bytes)
            return Response(payload, status, headers)
        except ServeError as exc:
            outcome = exc.outcome
            return error_response(exc)
        finally:
            metrics.request_finished(outcome, time.perf_counter() - started)

    async def stats(request: Request) -> Response:
        """The statistics extension: ``/v2/models/stats`` (every model) or one model's."""
        if "model" in request.path_params:
            try:
                check_model(service, request.path_params["model"], request.path_params.get("version"), loaded=False)
            except ServeError as exc:
                return error_response(exc)
        try:
            snapshot = await service.statistics_snapshot()
        except ServeError as exc:  # the engine process is not reachable
            return error_response(exc)
        return json_response(statistics_json([(service.name, VERSION, snapshot)]))

    async def shm_status(request: Request) -> Response:
        try:
            return json_response(service.shared_memory.status(request.path_params.get("name")))
        except ServeError as exc:
            return error_response(exc)

    async def shm_register(request: Request) -> Response:
        try:
            body = await read_body(request.receive, REGISTRATION_MAX_BYTES, "a registration is a small JSON object")
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
                raise BadRequest(f"the registration is not valid JSON: {exc}") from None
            await service.register_region(spec_of(request.path_params["name"], doc))
        except ServeError as exc:
            return error_response(exc)
        return json_response({})

    async def shm_unregister(request: Request) -> Response:
        try:
            await service.unregister_region(request.path_params.get("name"))
        except ServeError as exc:
            return error_response(exc)
        return json_response({})

    async def cuda_status(request: Request) -> Response:
        if "name" in request.path_params:
            return error_response(BadRequest(f"no CUDA shared memory region {request.path_params['name']!r} is "
                                             "registered (this server has no CUDA shared memory)"))
        return json_response([])

    async def cuda_register(request: Request) -> Response:
        return error_response(BadRequest(CUDA_SHM_MESSAGE))

    async def cuda_unregister(request: Request) -> Response:
        return json_response({})  # nothing is ever registered (clients unregister all before they start)

    async def prometheus(request: Request) -> Response:
        text, content_type = await service.render_metrics()
        return Response(text, media_type=content_type)

    model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v2/models/stats", stats, methods=["GET"]),  # before /v2/models/{model}
    ]
    for kind, (status, register, unregister) in (("system", (shm_status, shm_register, shm_unregister)),
                                                  ("cuda", (cuda_status, cuda_register, cuda_unregister))):
        base = f"/v2/{kind}sharedmemory"
        routes += [
            Route(base + "/status", status, methods=["GET"]),
            Route(base + "/region/{name}/status", status, methods=["GET"]),
            Route(base + "/region/{name}/register", register, methods=["POST"]),
            Route(base + "/region/{name}/unregister", unregister, methods=["POST"]),
            Route(base + "/unregister", unregister, methods=["POST"]),
        ]
    for base in model_paths:
        routes += [
            Route(base, metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/config", config, methods=["GET"]),
            Route(base + "/stats", stats, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return Response(error_body(f"{request.method} {request.url.path}: {exc.detail}"), exc.status_code,
                        media_type=JSON)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    return FastInfer(app, service, max_body_bytes, max_inflight_bytes=max_inflight_bytes,  # type: ignore[return-value]
                     body_timeout_s=body_timeout_s)
