"""What the served model accepts, and admission: a request is checked whole before it is queued.

``ModelInfo`` describes the loaded model (tensors, max batch, platform); ``admit`` turns
a parsed request into feeds + batch rows + merge signature, or raises ``BadRequest``
with a message that names the tensor and what the model expects. Because every check
happens here, before the queue, a bad request never reaches a batch shared with others.
Also builds the metadata and config documents of the v2 / Triton model endpoints.
Called by ``service`` (admission) and ``app`` (metadata).
"""
from __future__ import annotations

import functools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.serve.batching import signature_of
from trtop.serve.errors import BadRequest
from trtop.serve.protocol import InferRequest, RequestedOutput, tensor_metadata, v2_datatype
from trtop.serve.types import Array

VERSION = "1"  # one model version per server; the engine key says which build it is


@dataclass(frozen=True)
class ModelInfo:
    name: str
    platform: str  # Triton-style: onnxruntime_onnx, tensorrt_plan, tensorflow_savedmodel
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    max_queue_delay_s: float = 0.0
    engine_key: str = ""
    target: str = ""
    buckets: tuple[int, ...] = ()  # batch sizes the engine runs at (warmed at start)

    @functools.cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    @functools.cached_property
    def specs(self) -> dict[str, TensorSpec]:
        """The inputs by name (admission looks them up per request)."""
        return {s.name: s for s in self.inputs}

    @functools.cached_property
    def dtypes(self) -> dict[str, np.dtype[Any]]:
        """The inputs' numpy dtypes by name."""
        return {s.name: np.dtype(s.dtype) for s in self.inputs}


@dataclass(frozen=True)
class Admitted:
    feeds: dict[str, Array]
    rows: int  # the batch dimension: what this request adds to a batch
    signature: Hashable  # requests merge only with equal signatures
    outputs: tuple[RequestedOutput, ...]  # what to send back, in order


def admit(info: ModelInfo, request: InferRequest) -> Admitted:
    """Check every tensor against the model; BadRequest names the first problem found."""
    specs = info.specs
    if request.inputs.keys() != specs.keys():  # the names are checked only when they differ (once per request)
        unknown = sorted(set(request.inputs) - set(specs))
        if unknown:
            raise BadRequest(f"unknown input {_names(unknown)}; {_expects(info.inputs, 'takes')}")
        missing = [n for n in specs if n not in request.inputs]
        raise BadRequest(f"missing input {_names(missing)}; {_expects(info.inputs, 'takes')}")
    rows: int | None = None
    for name, array in request.inputs.items():
        spec = specs[name]
        if array.dtype != info.dtypes[name]:  # numpy dtypes compare in C; ``.name`` builds a string each time
            raise BadRequest(f"input {name!r} has datatype {v2_datatype(array.dtype.name)}, "
                             f"the model expects {v2_datatype(spec.dtype)}")
        if not _shape_fits(array.shape, spec.shape):
            raise BadRequest(f"input {name!r} has shape {list(array.shape)}, the model expects "
                             f"{list(spec.shape)} (-1 = any size; the first dimension is the batch)")
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise BadRequest(f"inputs disagree on the batch size: {name!r} has {array.shape[0]} rows, others {rows}")
    assert rows is not None  # at least one input: the parser refuses an empty list
    if rows < 1:
        raise BadRequest("the batch dimension (first dimension) must be at least 1")
    if rows > info.max_batch:
        raise BadRequest(f"the request has {rows} rows, more than the model's max batch of {info.max_batch}; "
                         "split it into smaller requests")
    return Admitted(dict(request.inputs), rows, signature_of(request.inputs), _outputs(info, request))


def _shape_fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    if len(shape) != len(expected) or not shape:
        return False
    return all(e < 0 or e == d for d, e in zip(shape, expected, strict=True))


def _outputs(info: ModelInfo, request: InferRequest) -> tuple[RequestedOutput, ...]:
    if request.outputs is None:
        return _all_outputs(info.output_names, request.binary_output)
    known = set(info.output_names)
    for out in request.outputs:
        if out.name not in known:
            raise BadRequest(f"unknown output {out.name!r}; {_expects(info.outputs, 'has outputs')}")
    return request.outputs


@functools.lru_cache(maxsize=64)
def _all_outputs(names: tuple[str, ...], binary: bool) -> tuple[RequestedOutput, ...]:
    """Every output, in the model's order (the same immutable tuple for every request that names none)."""
    return tuple(RequestedOutput(n, binary) for n in names)


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _expects(specs: tuple[TensorSpec, ...], verb: str) -> str:
    listed = ", ".join(f"{s.name} ({v2_datatype(s.dtype)} {list(s.shape)})" for s in specs)
    return f"the model {verb}: {listed}"


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the v2 model metadata document."""
    return {
        "name": info.name, "versions": [VERSION], "platform": info.platform,
        "inputs": [tensor_metadata(s) for s in info.inputs],
        "outputs": [tensor_metadata(s) for s in info.outputs],
        "parameters": {"engine_key": info.engine_key, "target": info.target, "backend": info.backend,
                       "max_batch_size": info.max_batch, "batch_sizes": ",".join(map(str, info.buckets))},
    }


def model_config(info: ModelInfo) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``: Triton's model configuration in JSON (dims without the batch)."""
    def tensor(s: TensorSpec) -> dict[str, Any]:
        return {"name": s.name, "data_type": "TYPE_" + v2_datatype(s.dtype), "dims": list(s.shape[1:])}

    return {
        "name": info.name, "platform": info.platform, "backend": info.backend,
        "max_batch_size": info.max_batch,
        "input": [tensor(s) for s in info.inputs], "output": [tensor(s) for s in info.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": int(info.max_queue_delay_s * 1e6),
                             "preferred_batch_size": list(info.buckets)},
    }
