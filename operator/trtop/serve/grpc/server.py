"""``inference.GRPCInferenceService`` (KServe v2 / Triton gRPC) on grpc.aio, over a model handle.

Thin, like ``app``: ``wire`` parses and encodes, the handle admits and infers, and domain
errors become status codes here (the only place that knows them), with the HTTP API's
messages. The handlers are registered from the service descriptor, so every RPC of the
protocol answers: the ones this server has not got say so with UNIMPLEMENTED. The server
runs on the event loop of the HTTP server; ``server`` (the process) builds, starts and
stops it. Requests larger than ``max_message_bytes`` (the HTTP body limit) are refused by
grpc itself with RESOURCE_EXHAUSTED.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from trtop.serve.errors import (
    BadRequest, InferenceFailed, ModelNotFound, NotReady, Overloaded, PayloadTooLarge, ServeError, TimedOut,
)
from trtop.serve.grpc import wire
from trtop.serve.grpc.proto import grpc_service_pb2 as pb
from trtop.serve.handle import SERVER_NAME, ModelHandle, check_model, extensions
from trtop.serve.model import VERSION, ModelInfo
from trtop.serve.protocol import write_outputs_to_regions
from trtop.serve.shared_memory import CUDA_SHM_MESSAGE, RegionSpec
from trtop.versions import TRTOP_VERSION

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
STATUS: dict[type[ServeError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT, ModelNotFound: grpc.StatusCode.NOT_FOUND,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED, NotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.UNAVAILABLE, TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
}
Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


def status_of(exc: ServeError) -> grpc.StatusCode:
    return next((code for cls, code in STATUS.items() if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)


def _fail(context: Context, exc: ServeError) -> None:
    """The RPC ends with the error's code and message (no exception: the hot path stays cheap)."""
    context.set_code(status_of(exc))
    context.set_details(str(exc))
    if isinstance(exc, Overloaded):
        context.set_trailing_metadata((("retry-after", str(max(1, round(exc.retry_after_s)))),))


class InferenceServicer:
    """The implemented RPCs; each takes the request message and the context, returns the response."""

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.handle.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=TRTOP_VERSION, extensions=extensions(self.handle))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        try:
            check_model(self.handle, request.name, request.version, loaded=False)
        except ServeError as exc:
            _fail(context, exc)
            return pb.ModelReadyResponse()
        return pb.ModelReadyResponse(ready=self.handle.ready)

    def _info(self, name: str, version: str, context: Context) -> ModelInfo | None:
        """The loaded model's info, or None with the RPC failed (unknown model or version, not loaded)."""
        try:
            return check_model(self.handle, name, version)
        except ServeError as exc:
            _fail(context, exc)
            return None

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        info = self._info(request.name, request.version, context)
        return pb.ModelMetadataResponse() if info is None else wire.metadata_response(info)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        info = self._info(request.name, request.version, context)
        return pb.ModelConfigResponse() if info is None else wire.config_response(info)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: Context) -> pb.ModelStatisticsResponse:
        if request.name:  # empty: every model (Triton's convention)
            try:
                check_model(self.handle, request.name, request.version, loaded=False)
            except ServeError as exc:
                _fail(context, exc)
                return pb.ModelStatisticsResponse()
        try:
            snapshot = await self.handle.statistics_snapshot()
        except ServeError as exc:  # the engine process is not reachable
            _fail(context, exc)
            return pb.ModelStatisticsResponse()
        return wire.statistics_response([(self.handle.name, VERSION, snapshot)])

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        started = time.perf_counter()
        metrics = self.handle.metrics
        metrics.request_started()
        outcome = "success"
        try:
            info = check_model(self.handle, request.model_name, request.model_version)
            assert info is not None
            regions = self.handle.shared_memory
            parsed = wire.parse_infer_request(request, regions if regions.enabled else None)
            remaining = context.time_remaining()  # the client's deadline bounds the queue wait too
            if remaining is not None and (parsed.timeout_s is None or remaining < parsed.timeout_s):
                parsed = dataclasses.replace(parsed, timeout_s=max(remaining, 1e-3))
            admitted, outputs = await self.handle.infer(parsed)
            answered = [(o.name, outputs[o.name]) for o in admitted.outputs]
            if any(o.region is not None for o in admitted.outputs):
                write_outputs_to_regions(regions, [(o, outputs[o.name]) for o in admitted.outputs])
                return wire.infer_response(info.name, parsed.id, answered,
                                           {o.name: o.region for o in admitted.outputs if o.region is not None})
            # already serialized (``_serialize`` passes bytes through)
            return wire.infer_response_bytes(info.name, parsed.id, answered)  # type: ignore[return-value]
        except ServeError as exc:
            outcome = exc.outcome
            _fail(context, exc)
            return pb.ModelInferResponse()
        finally:
            metrics.request_finished(outcome, time.perf_counter() - started)


    # -- Triton's system shared memory extension (serve.shared_memory); CUDA shared memory: none ----------
    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest,
                                       context: Context) -> pb.SystemSharedMemoryStatusResponse:
        try:
            found = self.handle.shared_memory.status(request.name or None)
        except ServeError as exc:
            _fail(context, exc)
            return pb.SystemSharedMemoryStatusResponse()
        return pb.SystemSharedMemoryStatusResponse(
            regions={r["name"]: pb.SystemSharedMemoryStatusResponse.RegionStatus(**r) for r in found})

    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                         context: Context) -> pb.SystemSharedMemoryRegisterResponse:
        try:
            await self.handle.register_region(RegionSpec(request.name, request.key, request.offset, request.byte_size))
        except ServeError as exc:
            _fail(context, exc)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                           context: Context) -> pb.SystemSharedMemoryUnregisterResponse:
        try:
            await self.handle.unregister_region(request.name or None)
        except ServeError as exc:
            _fail(context, exc)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest,
                                     context: Context) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            _fail(context, BadRequest(f"no CUDA shared memory region {request.name!r} is registered "
                                      "(this server has no CUDA shared memory)"))
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest,
                                       context: Context) -> pb.CudaSharedMemoryRegisterResponse:
        _fail(context, BadRequest(CUDA_SHM_MESSAGE))
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest,
                                         context: Context) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # nothing is ever registered


def _unimplemented(method: str) -> Callable[[Any, Context], Awaitable[Any]]:
    message = (f"{SERVICE}/{method} is not implemented by trtop serve; it implements ServerLive, ServerReady, "
               "ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelInfer, ModelStatistics and the shared "
               "memory RPCs")

    async def unary(request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return unary


async def _unimplemented_stream(method: str, requests: AsyncIterator[Any], context: Context) -> None:
    await _unimplemented(method)(None, context)


class Undecodable:
    """What a request's bytes became where they are not a message of the method's type: the call is answered
    INVALID_ARGUMENT with this message. When the deserializer raised instead, grpc answered UNKNOWN and logged an
    ERROR with a traceback for every such call, which any client could fill the log with."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _decoder(request_cls: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    name = request_cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Message | Undecodable:
        try:
            return request_cls.FromString(data)
        except (DecodeError, RecursionError) as exc:
            return Undecodable(f"the request is not a valid {name} message ({exc})")

    return decode


def _decoded(impl: Callable[[Any, Context], Awaitable[Any]]) -> Callable[[Any, Context], Awaitable[Any]]:
    async def unary(request: Any, context: Context) -> Any:
        if type(request) is Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await impl(request, context)

    return unary


def _serialize(response: Message | bytes) -> bytes:
    """A response message's bytes; ModelInfer hands over its answer already serialized."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def generic_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """Handlers for every method of the service descriptor (implemented or UNIMPLEMENTED)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_cls: type[Message] = getattr(pb, method.input_type.name)
        codec = {"request_deserializer": _decoder(request_cls), "response_serializer": _serialize}
        if method.client_streaming or method.server_streaming:
            name = method.name

            async def stream(requests: AsyncIterator[Any], context: Context, name: str = name) -> None:
                await _unimplemented_stream(name, requests, context)

            handlers[method.name] = grpc.stream_stream_rpc_method_handler(stream, **codec)
        else:
            impl = getattr(servicer, method.name, None) or _unimplemented(method.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_decoded(impl), **codec)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def build_grpc_server(
    handle: ModelHandle, *, host: str, port: int, max_message_bytes: int, reuse_port: bool, address: str = "",
    max_concurrent_rpcs: int | None = None, max_connection_age_s: float = 0.0, grace_s: float = 30.0,
) -> grpc.aio.Server:
    """A grpc.aio server bound to ``host:port`` (not started: ``await server.start()`` in the event loop).

    ``reuse_port``: several processes may listen on the port (SO_REUSEPORT; the kernel spreads
    connections); off, a second bind fails instead of sharing silently (grpc's default is on).
    ``max_concurrent_rpcs``: RPCs past it are refused with RESOURCE_EXHAUSTED before their
    message is handled, so memory held by requests stays bounded (messages x this).
    ``max_connection_age_s``: connections older than this get GOAWAY (0: never); their calls in flight
    have ``grace_s`` more to finish, the request deadline. ``address``: where to listen instead of
    ``host:port``."""
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", max(1, int(max_connection_age_s * 1000))),
                    ("grpc.max_connection_age_grace_ms", max(1, int(grace_s * 1000)))]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
    server.add_generic_rpc_handlers((generic_handler(InferenceServicer(handle)),))
    if not address:  # else given whole (``unix:path``: behind the native front-ends)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server.add_insecure_port(address)  # raises RuntimeError when the address cannot be bound
    log.info("gRPC (%s) on %s", SERVICE, address)
    return server
