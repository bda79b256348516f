"""What the routes (HTTP, gRPC) hold of the model: one protocol, two implementations.

``InferenceService`` (the model in this process) and ``frontend.RemoteModel`` (the model
in the engine process, reached over shared memory) both provide it, so the routes are
the same in a single-process server and in each front-end process. ``check_model`` is
the one place that turns the model name and version of a URL or an RPC into the model's
info or a ServeError, so both protocols refuse with the same words.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from trtop.serve.errors import ModelNotFound, NotReady
from trtop.serve.model import VERSION, Admitted, ModelInfo
from trtop.serve.protocol import InferRequest
from trtop.serve.shared_memory import RegionSpec, Registry
from trtop.serve.statistics import StatsSnapshot
from trtop.serve.types import Outputs

SERVER_NAME = "trtop"
# What ``GET /v2`` and ServerMetadata list (Triton's extension names).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")
SHARED_MEMORY_EXTENSION = "system_shared_memory"  # listed too when the server runs with --shared-memory system


def extensions(handle: ModelHandle) -> list[str]:
    return [*EXTENSIONS, SHARED_MEMORY_EXTENSION] if handle.shared_memory.enabled else list(EXTENSIONS)


class RequestCounter(Protocol):
    def request_started(self) -> None: ...

    def request_finished(self, outcome: str, seconds: float) -> None: ...


class ModelHandle(Protocol):
    name: str

    @property
    def state(self) -> str: ...

    @property
    def error(self) -> str: ...

    @property
    def info(self) -> ModelInfo | None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def metrics(self) -> RequestCounter: ...

    @property
    def shared_memory(self) -> Registry:
        """The system shared memory regions requests may name (``serve.shared_memory``)."""

    async def register_region(self, spec: RegionSpec) -> None:
        """Register a region for every process of the server (BadRequest when it cannot be)."""

    async def unregister_region(self, name: str | None) -> None:
        """Forget one region (None: all of them) in every process of the server."""

    def infer_started(self, request: InferRequest) -> tuple[Admitted, asyncio.Future[Outputs]]:
        """Admit (a ServeError at once, before anything is queued) and queue; the future resolves with this
        request's outputs or a ServeError. No coroutine: the HTTP protocol answers from its callback."""

    async def infer(self, request: InferRequest) -> tuple[Admitted, Outputs]:
        """``infer_started`` and wait for the outputs."""

    async def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition text of the whole pod and its content type."""

    async def statistics_snapshot(self) -> StatsSnapshot:
        """The statistics extension's counters of the whole pod."""

    def begin_drain(self) -> None:
        """Not ready from now on, still serving."""

    def flush(self) -> None:
        """Run what is queued without waiting for batches to fill."""

    async def close(self) -> None: ...


def check_model(handle: ModelHandle, name: str, version: str | None, *, loaded: bool = True) -> ModelInfo | None:
    """The model's info when ``name``/``version`` are what this server serves (version empty = any);
    ModelNotFound otherwise; NotReady while it is not loaded (unless ``loaded`` is False)."""
    if name != handle.name:
        raise ModelNotFound(f"model {name!r} is not served here; this server serves {handle.name!r}")
    if version not in (None, "", VERSION):
        raise ModelNotFound(f"model {name!r} has no version {version!r}; this server serves version {VERSION}")
    if loaded and handle.info is None:
        raise NotReady(not_ready_message(handle))
    return handle.info


def not_ready_message(handle: ModelHandle) -> str:
    return f"model {handle.name!r} is {handle.state}" + (f": {handle.error}" if handle.error else "")
