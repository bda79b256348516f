"""What the routes (HTTP, gRPC) hold of the model: one protocol, two implementations.

``InferenceService`` (the model in this process) and ``frontend.RemoteModel`` (the model
in the engine process, reached over shared memory) both provide it, so the routes are
the same in a single-process server and in each front-end process.
"""
from __future__ import annotations

from typing import Protocol

from trtop.serve.model import Admitted, ModelInfo
from trtop.serve.protocol import InferRequest
from trtop.serve.types import Outputs


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

    async def infer(self, request: InferRequest) -> tuple[Admitted, Outputs]:
        """Admit (BadRequest before anything is queued), run in a batch, return this request's outputs."""

    async def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition text of the whole pod and its content type."""

    def begin_drain(self) -> None:
        """Not ready from now on, still serving."""

    def flush(self) -> None:
        """Run what is queued without waiting for batches to fill."""

    async def close(self) -> None: ...
