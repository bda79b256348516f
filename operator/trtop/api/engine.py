"""Engine identity and the two documents that cross process boundaries.

- ``EngineRequest``: what the operator asks a build Job to make (passed as JSON in the
  ``TRTOP_ENGINE_REQUEST`` env var; ``trtop convert --request`` takes the same JSON).
- ``EngineRecord``: what the converter publishes as ``<store>/<scope>/<key>/engine.json``
  and what the server and the operator read back, through ``parse_record`` only: a
  record is written by a build pod (tenant code), so every field is checked and a bad
  one is a ``RecordError`` naming it, never a crash further on.

The key is a hash of everything that changes the built bytes and of the store scope (the
namespace, or a group of namespaces that trust each other), so the same key means the
same engine for the same tenant: reuse it, never build twice. It names the Job, the store
folder and the status entry. The record pins the artifact's bytes (sha256 and size).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NewType, get_args

from trtop import names
from trtop.api.targets import Target

EngineKey = NewType("EngineKey", str)

Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
ModelFormat = Literal["savedmodel", "keras", "onnx"]
Method = Literal["onnx", "tf-trt"]
Backend = Literal["tensorrt", "onnxruntime"]
HardwareCompatibility = Literal["none", "same-compute-capability", "ampere-plus"]

# Bump when the converter's output for the same inputs changes (forces rebuilds).
CONVERTER_VERSION = "2"  # 2: records pin the artifact (sha256, size); keys carry the store scope


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
    store_uri: str = ""  # the store as the build Job sees it, already narrowed to ``scope``
    converter_version: str = CONVERTER_VERSION
    scope: str = ""  # the store scope (namespace or sharing group) the key belongs to

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
            scope=d.get("scope", ""),
        )


def engine_key(
    *, model: ModelSource, target: Target, backend: Backend, precision: Precision,
    batch: BatchProfile, method: Method, workspace_mib: int,
    hardware_compatibility: HardwareCompatibility, builder_options: Mapping[str, Any],
    trt_version: str, scope: str, converter_version: str = CONVERTER_VERSION,
) -> EngineKey:
    """Content hash of everything that shapes the engine; ``e-`` + 16 hex chars (DNS-safe).

    The model is identified by its digest when the spec pins one, else by its URI: a user
    who overwrites a model in place must change the URI or pin a digest to get a rebuild.
    The product is part of the target only when hardware compatibility is ``none``.
    ``scope`` (``Settings.store_scope``: the namespace unless namespaces share engines) makes
    two tenants with the same ``pvc://models/resnet`` get two keys, and a known digest
    alone never reaches another tenant's engine.
    """
    if not scope:
        raise ValueError("engine_key needs the store scope (the ModelDeployment's namespace or sharing group)")
    identity = {
        "scope": scope,
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
    sha256: str = ""  # hex sha256 of the artifact (a folder artifact: see trtop.store.integrity)
    size: int = 0  # the artifact's bytes (a folder: the sum of its files)
    # Sub-folder of the key's store location holding the artifact: an S3 store publishes each
    # build under its own upload prefix and commits the record naming it; "" elsewhere.
    folder: str = ""

    def to_json(self) -> str:
        return json.dumps(_plain(asdict(self)), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> EngineRecord:
        """Same as ``parse_record`` (kept for callers that hold trusted text)."""
        return parse_record(text)


class RecordError(ValueError):
    """An ``engine.json`` that is not a valid engine record; the message names the field and the fix."""


MAX_RECORD_BYTES = 1 << 20  # a real record is a few KiB
_KEY = re.compile(r"^e-[0-9a-f]{16}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # one path component: no '/', never '..'
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DTYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MAX_TENSORS = 1024
_MAX_RANK = 16


_REQUIRED: Any = object()


def is_engine_key(text: str) -> bool:
    return bool(_KEY.match(text))


def is_artifact_name(text: str) -> bool:
    """One safe file or folder name inside a key's folder (``model.plan``); never a path out of it."""
    return bool(_NAME.match(text)) and text != names.ENGINE_METADATA_FILE and ".." not in text


def parse_record(text: str | bytes, *, key: EngineKey | None = None, where: str = "engine.json") -> EngineRecord:
    """The one way to read an engine record: every field checked, ``RecordError`` naming what is wrong.

    ``key``: the key whose location the record was read from; a record naming another key
    (copied from elsewhere) is refused. ``where`` names the record in messages.
    """
    if len(text) > MAX_RECORD_BYTES:
        raise RecordError(f"{where}: {len(text)} bytes, more than the {MAX_RECORD_BYTES} an engine record may have")
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"{where} is not valid JSON ({exc})") from None
    p = _Fields(d, where)
    record_key = p.text("key")
    if not _KEY.match(record_key):
        raise RecordError(f"{where}: key {record_key!r} is not an engine key (e- and 16 hex digits)")
    if key is not None and record_key != key:
        raise RecordError(f"{where} names engine {record_key} but was read from the location of {key}: "
                          "a record copied from elsewhere is not served; rebuild the engine")
    target_doc = p.obj("target")
    try:
        target = Target.from_dict({"cc": target_doc.get("cc"), "product": target_doc.get("product")})
    except (ValueError, TypeError) as exc:
        raise RecordError(f"{where}: target: {exc}") from None
    if target_doc.get("product") is not None and not isinstance(target_doc.get("product"), str):
        raise RecordError(f"{where}: target.product must be a string or null")
    artifact = p.text("artifact")
    if not is_artifact_name(artifact):
        raise RecordError(f"{where}: artifact {artifact!r} must be one file or folder name inside the engine "
                          "folder (letters, digits, '.', '_', '-'; no '/' or '..')")
    folder = p.text("folder", "")
    if folder and not is_artifact_name(folder):
        raise RecordError(f"{where}: folder {folder!r} must be one folder name inside the engine's location")
    sha256 = p.text("sha256")
    if not _SHA256.match(sha256):
        raise RecordError(f"{where}: sha256 {sha256!r} is not 64 lower-case hex digits (the artifact's checksum)")
    batch_doc = p.obj("batch")
    b = _Fields(batch_doc, f"{where}: batch")
    batch = BatchProfile(b.integer("min", 1), b.integer("opt", 1), b.integer("max", 1))
    if not batch.min <= batch.opt <= batch.max:
        raise RecordError(f"{where}: batch must have min <= opt <= max, not {batch}")
    return EngineRecord(
        key=EngineKey(record_key), target=target, backend=p.choice("backend", get_args(Backend)),
        artifact=artifact, precision=p.choice("precision", get_args(Precision)), batch=batch,
        inputs=p.tensors("inputs"), outputs=p.tensors("outputs"), model_digest=p.text("model_digest"),
        versions=p.text_map("versions"), parity=p.number_map("parity"),
        benchmark=p.benchmark("benchmark"),
        build_seconds=p.number("build_seconds", 0.0), device=p.text_map("device"), created=p.text("created", ""),
        sha256=sha256, size=p.integer("size", 0), folder=folder, buckets=p.buckets("buckets", batch.max),
    )


class _Fields:
    """Typed reads of one JSON object's fields; every failure is a RecordError naming the field."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise RecordError(f"{where} must be a JSON object, not {type(doc).__name__}")
        self.doc, self.where = doc, where

    def _get(self, name: str, default: Any) -> Any:
        if name in self.doc and self.doc[name] is not None:
            return self.doc[name]
        if default is _REQUIRED:
            raise RecordError(f"{self.where}: field {name!r} is missing")
        return default

    def _bad(self, name: str, what: str) -> RecordError:
        return RecordError(f"{self.where}: field {name!r} must be {what}, not {type(self.doc.get(name)).__name__}")

    def text(self, name: str, default: Any = None) -> str:
        value = self._get(name, _REQUIRED if default is None else default)
        if not isinstance(value, str) or len(value) > 4096:
            raise self._bad(name, "a string (up to 4096 characters)")
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> Any:
        value = self.text(name)
        if value not in allowed:
            raise RecordError(f"{self.where}: {name} {value!r} is not one of {', '.join(allowed)}")
        return value

    def integer(self, name: str, minimum: int) -> int:
        value = self._get(name, _REQUIRED)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > 1 << 62:
            raise self._bad(name, f"an integer >= {minimum}")
        return value

    def number(self, name: str, default: float) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._bad(name, "a finite number")
        return float(value)

    def obj(self, name: str, default: Any = None) -> dict[str, Any]:
        value = self._get(name, _REQUIRED if default is None else default)
        if not isinstance(value, dict):
            raise self._bad(name, "an object")
        return value

    def text_map(self, name: str) -> dict[str, str]:
        value = self.obj(name, {})
        if len(value) > 256 or not all(isinstance(v, str) and len(v) <= 4096 for v in value.values()):
            raise self._bad(name, "an object of strings")
        return dict(value)

    def number_map(self, name: str) -> dict[str, float]:
        value = self.obj(name, {})
        if len(value) > 256:
            raise self._bad(name, "an object of up to 256 numbers")
        out = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RecordError(f"{self.where}: {name}.{k} must be a finite number, not {v!r}")
            out[k] = float(v)
        return out

    def benchmark(self, name: str) -> dict[str, dict[str, float]]:
        value = self.obj(name, {})
        if len(value) > 64:
            raise self._bad(name, "an object of up to 64 measurements")
        return {k: _Fields(value, f"{self.where}: {name}").number_map(k) for k in value}

    def buckets(self, name: str, max_batch: int) -> tuple[int, ...]:
        value = self._get(name, [])
        if (not isinstance(value, list) or len(value) > 64
                or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= max_batch for b in value)):
            raise self._bad(name, f"a list of up to 64 batch sizes between 1 and batch.max ({max_batch})")
        return tuple(value)

    def tensors(self, name: str) -> tuple[TensorSpec, ...]:
        value = self._get(name, _REQUIRED)
        if not isinstance(value, list) or not value or len(value) > _MAX_TENSORS:
            raise self._bad(name, f"a non-empty list (up to {_MAX_TENSORS}) of tensors")
        out = []
        for i, t in enumerate(value):
            f = _Fields(t, f"{self.where}: {name}[{i}]")
            tname, dtype, shape = f.text("name"), f.text("dtype"), f._get("shape", _REQUIRED)
            if not _DTYPE.match(dtype):
                raise RecordError(f"{f.where}: dtype {dtype!r} is not a numpy dtype name")
            if (not isinstance(shape, list) or len(shape) > _MAX_RANK
                    or not all(isinstance(n, int) and not isinstance(n, bool) and -1 <= n < 1 << 31 for n in shape)):
                raise RecordError(f"{f.where}: shape must be a list of up to {_MAX_RANK} integers >= -1")
            out.append(TensorSpec(tname, dtype, tuple(shape)))
        return tuple(out)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
