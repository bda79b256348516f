"""Engine identity and the two documents that cross process boundaries.

- ``EngineRequest``: what the operator asks a build Job to make (passed as JSON in the
  ``TRTOP_ENGINE_REQUEST`` env var; ``trtop convert --request`` takes the same JSON).
- ``EngineRecord``: what the converter publishes as ``<store>/<key>/engine.json`` and
  what the server and the operator read back.

The key is a hash of everything that changes the built bytes, so the same key means the
same engine: reuse it, never build twice. It names the Job, the store folder and the
status entry.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NewType

from trtop.api.targets import Target

EngineKey = NewType("EngineKey", str)

Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
ModelFormat = Literal["savedmodel", "keras", "onnx"]
Method = Literal["onnx", "tf-trt"]
Backend = Literal["tensorrt", "onnxruntime"]
HardwareCompatibility = Literal["none", "same-compute-capability", "ampere-plus"]

# Bump when the converter's output for the same inputs changes (forces rebuilds).
CONVERTER_VERSION = "1"


@dataclass(frozen=True)
class ModelSource:
    uri: str
    format: ModelFormat
    digest: str | None = None  # "sha256:<hex>"; when set the converter refuses other bytes
    signature: str = "serving_default"
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # -1 = dynamic


@dataclass(frozen=True)
class BatchProfile:
    min: int = 1
    opt: int = 8
    max: int = 32


def batch_buckets(max_batch: int, sizes: Sequence[int] = ()) -> tuple[int, ...]:
    """The batch sizes a server runs an engine at: ``sizes`` when given, else the powers of two below
    ``max_batch`` and ``max_batch`` itself (1, 2, 4, 8, 16, 32 for 32; 1, 2, 4, 6 for 6).

    Batches are padded up to the next bucket, so every size the engine sees is warmed at start:
    engines and ONNX Runtime's CUDA provider tune per shape, and a new shape mid-traffic
    stalls the GPU (0.1-0.7 s per new size measured on an H200 with ONNX Runtime).
    """
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    if sizes:
        chosen = sorted({int(s) for s in sizes if 1 <= int(s) <= max_batch} | {max_batch})
        return tuple(chosen)
    out = []
    b = 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(max_batch)
    return tuple(out)


@dataclass(frozen=True)
class EngineRequest:
    key: EngineKey
    model: ModelSource
    target: Target
    backend: Backend
    precision: Precision = "fp32"
    batch: BatchProfile = BatchProfile()
    method: Method = "onnx"
    workspace_mib: int = 4096
    hardware_compatibility: HardwareCompatibility = "none"
    builder_options: Mapping[str, Any] = field(default_factory=dict)
    calibration_uri: str | None = None
    sample_data_uri: str | None = None
    store_uri: str = ""
    converter_version: str = CONVERTER_VERSION

    def to_json(self) -> str:
        return json.dumps(_plain(asdict(self)), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineRequest:
        d = json.loads(text)
        m = d["model"]
        model = ModelSource(
            uri=m["uri"], format=m["format"], digest=m.get("digest"),
            signature=m.get("signature") or "serving_default",
            input_shapes={k: tuple(v) for k, v in (m.get("input_shapes") or {}).items()},
        )
        return cls(
            key=EngineKey(d["key"]), model=model, target=Target.from_dict(d["target"]),
            backend=d["backend"], precision=d.get("precision", "fp32"),
            batch=BatchProfile(**d.get("batch", {})), method=d.get("method", "onnx"),
            workspace_mib=int(d.get("workspace_mib", 4096)),
            hardware_compatibility=d.get("hardware_compatibility", "none"),
            builder_options=d.get("builder_options") or {},
            calibration_uri=d.get("calibration_uri"), sample_data_uri=d.get("sample_data_uri"),
            store_uri=d.get("store_uri", ""), converter_version=d.get("converter_version", CONVERTER_VERSION),
        )


def engine_key(
    *, model: ModelSource, target: Target, backend: Backend, precision: Precision,
    batch: BatchProfile, method: Method, workspace_mib: int,
    hardware_compatibility: HardwareCompatibility, builder_options: Mapping[str, Any],
    trt_version: str, converter_version: str = CONVERTER_VERSION,
) -> EngineKey:
    """Content hash of everything that shapes the engine; ``e-`` + 16 hex chars (DNS-safe).

    The model is identified by its digest when the spec pins one, else by its URI: a user
    who overwrites a model in place must change the URI or pin a digest to get a rebuild.
    The product is part of the target only when hardware compatibility is ``none``.
    """
    identity = {
        "model": model.digest or model.uri,
        "format": model.format,
        "signature": model.signature,
        "input_shapes": {k: list(v) for k, v in sorted(model.input_shapes.items())},
        "target": target.to_dict() if hardware_compatibility == "none" else {"cc": target.cc, "product": None},
        "backend": backend,
        "precision": precision,
        "batch": asdict(batch),
        "method": method,
        "workspace_mib": workspace_mib,
        "hwcompat": hardware_compatibility,
        "builder": dict(sorted(builder_options.items())),
        "trt": trt_version,
        "converter": converter_version,
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return EngineKey("e-" + hashlib.sha256(blob).hexdigest()[:16])


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    shape: tuple[int, ...]  # -1 = dynamic; the first dim is the batch


@dataclass(frozen=True)
class EngineRecord:
    """Contents of ``engine.json``: the published engine's identity, interface and quality."""

    key: EngineKey
    target: Target
    backend: Backend
    artifact: str  # file name inside the key's folder: "model.plan" / "model.onnx"
    precision: Precision
    batch: BatchProfile
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model_digest: str
    versions: Mapping[str, str]  # converter, tensorrt / onnxruntime, tensorflow, tf2onnx ...
    parity: Mapping[str, float]  # max_abs_error, max_rel_error, tolerance
    benchmark: Mapping[str, Any]  # {"batch_opt": {"p50_ms":..,"p99_ms":..,"throughput":..}, ...}
    build_seconds: float
    device: Mapping[str, str] = field(default_factory=dict)  # what NVML read during the build
    created: str = ""  # RFC 3339
    # Batch sizes the engine was built/profiled for and the server warms (``batch_buckets``); empty:
    # a record from before buckets, the server derives them from ``batch.max``.
    buckets: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps(_plain(asdict(self)), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> EngineRecord:
        d = json.loads(text)

        def spec(t: Mapping[str, Any]) -> TensorSpec:
            return TensorSpec(t["name"], t["dtype"], tuple(t["shape"]))

        return cls(
            key=EngineKey(d["key"]), target=Target.from_dict(d["target"]), backend=d["backend"],
            artifact=d["artifact"], precision=d["precision"], batch=BatchProfile(**d["batch"]),
            inputs=tuple(spec(t) for t in d["inputs"]), outputs=tuple(spec(t) for t in d["outputs"]),
            model_digest=d["model_digest"], versions=d.get("versions", {}), parity=d.get("parity", {}),
            benchmark=d.get("benchmark", {}), build_seconds=float(d.get("build_seconds", 0.0)),
            device=d.get("device", {}), created=d.get("created", ""),
            buckets=tuple(int(b) for b in d.get("buckets") or ()),
        )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
