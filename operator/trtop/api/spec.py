"""The ModelDeployment spec as typed, defaulted, validated plain data.

``parse_spec(dict) -> ModelDeploymentSpec`` is called by the operator on every
reconcile. Defaults here mirror the CRD's schema defaults (the API server applies
those; we apply them again so a spec read from a file or an older object behaves the
same) and never get written back to the object: GitOps tools see no diff.
Checks the schema cannot express (URI schemes, target syntax, shape names) raise
``SpecError`` with the field to fix.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from trtop import names
from trtop.api.engine import BatchProfile, HardwareCompatibility, Method, ModelFormat, ModelSource, Precision
from trtop.api import validation
from trtop.api.errors import SpecError
from trtop.api.targets import Target

MODEL_URI_SCHEMES = ("pvc", "s3", "gs", "https", "file")
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16", "int8", "fp8")
KeepAwake = Literal["auto", "on", "off"]
KEEP_AWAKE: tuple[KeepAwake, ...] = ("auto", "on", "off")  # the server's --keep-awake
SlotHandoff = Literal["on", "off"]
SLOT_HANDOFF: tuple[SlotHandoff, ...] = ("on", "off")  # the server's --slot-handoff
DEFAULT_SLOT_HANDOFF: SlotHandoff = "on"  # what it does and why on: ``serve.settings.ServeSettings.slot_handoff``
SharedMemory = Literal["off", "system"]
SHARED_MEMORY: tuple[SharedMemory, ...] = ("off", "system")  # the server's --shared-memory
HttpFrontend = Literal["python", "native", "auto"]
HTTP_FRONTENDS: tuple[HttpFrontend, ...] = ("python", "native", "auto")  # the server's --http-frontend
# auto: native front-ends (trtop-http) where the image has them (both server images do), else Python ones. On an
# H100 host they met the tiny model's gRPC target where Python ones did not (30,083 against 18,491 req/s), added
# 0.13 ms less to a lone ResNet-50 request and served it within 2% at 128 clients (0.91 against 0.93 x); on two CPU
# cores a light model's 64 connections 0.25 against 0.16 x, for ~0.1 ms more on its lone request (Python front-ends
# run there as one process, without a hop; docs/server-measured.md, thirtieth session).
DEFAULT_HTTP_FRONTEND: HttpFrontend = "auto"
MAX_SIDECARS = 8
FORMATS: tuple[ModelFormat, ...] = ("savedmodel", "keras", "onnx")
METHODS: tuple[Method, ...] = ("onnx", "tf-trt")
HW_COMPAT: tuple[HardwareCompatibility, ...] = ("none", "same-compute-capability", "ampere-plus")
ScalingMode = Literal["builtin", "external", "none"]
ScalingMetric = Literal["inflight", "rps", "queue-time"]
SCALING_MODES: tuple[ScalingMode, ...] = ("builtin", "external", "none")
SCALING_METRICS: tuple[ScalingMetric, ...] = ("inflight", "rps", "queue-time")
AUTO = "auto"

_TARGET = re.compile(r"^(auto|cpu|[0-9]+\.[0-9]+(/[A-Za-z0-9._-]+)?)$")


@dataclass(frozen=True)
class EngineSpec:
    precision: Precision = "fp32"
    batch: BatchProfile = BatchProfile()
    workspace_mib: int = 4096
    method: Method = "onnx"
    auto_targets: bool = True
    targets: tuple[Target, ...] = ()  # explicit targets (in addition to discovered ones when auto)
    hardware_compatibility: HardwareCompatibility = "none"
    build_timeout_seconds: int = 3600
    backoff_limit: int = 2
    retry_after_seconds: int = 600  # a failed build's Job is kept this long, then retried
    builder_image: str | None = None
    builder_options: Mapping[str, str] = field(default_factory=dict)
    sample_data_uri: str | None = None
    calibration_uri: str | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    # Tolerations of build Jobs; None: the serving tolerations of GPU taints (keys under nvidia.com/).
    tolerations: tuple[Mapping[str, Any], ...] | None = None


@dataclass(frozen=True)
class Sidecar:
    """A container beside the server in every serving pod, e.g. a pre-processing client that hands the
    server tensors in shared memory (the pod's containers share its /dev/shm). Only what a client needs:
    no volumes (the server's hold the store's credentials), no privileges, none of trtop's variables."""
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[Mapping[str, str], ...] = ()  # {name, value} only: no valueFrom
    ports: tuple[Mapping[str, Any], ...] = ()  # {name?, containerPort, protocol?}
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingSpec:
    image: str | None = None
    port: int = 8000
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = 256
    keep_awake: KeepAwake = "auto"
    slot_handoff: SlotHandoff = DEFAULT_SLOT_HANDOFF
    shared_memory: SharedMemory = "off"
    http_frontend: HttpFrontend = DEFAULT_HTTP_FRONTEND
    sidecars: tuple[Sidecar, ...] = ()
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScalingSpec:
    mode: ScalingMode = "builtin"
    min_replicas: int = 1
    max_replicas: int = 4
    metric: ScalingMetric = "inflight"
    target: float = 4.0
    scale_up_window_seconds: int = 0
    scale_down_window_seconds: int = 300


@dataclass(frozen=True)
class RolloutSpec:
    max_surge: str = "25%"
    max_unavailable: str = "0"
    keep_previous_engines: int = 1
    # No GPU of a unit's type free for a new pod beside the old ones: ReplaceInPlace rolls it one pod fewer at a
    # time (as maxUnavailable 1) until done (a lone pod then leaves a gap while its successor loads); Wait keeps
    # every old pod, and the rollout waits for a free GPU.
    when_full: str = names.ROLLOUT_WHEN_FULL[0]


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: ModelSource
    engine: EngineSpec = EngineSpec()
    serving: ServingSpec = ServingSpec()
    scaling: ScalingSpec = ScalingSpec()
    rollout: RolloutSpec = RolloutSpec()
    replicas: int | None = None  # the scale subresource's field: used by modes "none" and "external"


def parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Typed, defaulted, validated spec from the object's ``spec`` dict.

    Raises ``SpecError`` and nothing else, whatever a tenant wrote: a value of the wrong
    type anywhere is a SpecError naming the spec, never a TypeError in the operator.
    """
    try:
        return _parse_spec(raw)
    except SpecError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
        raise SpecError("", f"a field has a value of the wrong type ({type(e).__name__}: {str(e)[:200]})") from e


def _parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    if not isinstance(raw, Mapping):
        raise SpecError("", f"must be an object, got {type(raw).__name__}")
    model = _parse_model(_section(raw, "model", required=True))
    engine = _parse_engine(_section(raw, "engine"))
    serving = _parse_serving(_section(raw, "serving"))
    scaling = _parse_scaling(_section(raw, "scaling"))
    rollout_raw = _section(raw, "rollout")
    rollout = RolloutSpec(
        max_surge=validation.check_rollout_bound(rollout_raw, "maxSurge", "25%"),
        max_unavailable=validation.check_rollout_bound(rollout_raw, "maxUnavailable", "0"),
        keep_previous_engines=_int(rollout_raw, "keepPreviousEngines", 1, "rollout", minimum=0),
        when_full=_enum(rollout_raw, "whenFull", names.ROLLOUT_WHEN_FULL, names.ROLLOUT_WHEN_FULL[0], "rollout"),
    )
    validation.check_rollout(rollout.max_surge, rollout.max_unavailable)
    replicas = raw.get("replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0):
        raise SpecError("replicas", f"must be a whole number >= 0, got {replicas!r}")
    if model.format == "onnx" and engine.method == "tf-trt":
        raise SpecError("engine.method", "tf-trt converts TensorFlow models; an ONNX model needs method 'onnx'")
    return ModelDeploymentSpec(model, engine, serving, scaling, rollout, replicas)


def _section(raw: Mapping[str, Any], name: str, *, required: bool = False) -> Mapping[str, Any]:
    value = raw.get(name)
    if value is None:
        if required:
            raise SpecError(name, "is required")
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(name, f"must be an object, got {type(value).__name__}")
    return value


def _enum(raw: Mapping[str, Any], key: str, allowed: Sequence[str], default: str, where: str) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise SpecError(f"{where}.{key}", f"{value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _int(raw: Mapping[str, Any], key: str, default: int, where: str, *, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}.{key}", f"must be a whole number >= {minimum}, got {value!r}")
    return value


def _strings(raw: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    return validation.check_string_map(raw.get(key), f"{where}.{key}", labels=key == "podLabels")


def _number(raw: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where}.{key}", f"must be a number, got {value!r}")
    return float(value)


def _parse_model(raw: Mapping[str, Any]) -> ModelSource:
    uri = raw.get("uri")
    if not isinstance(uri, str) or not uri:
        raise SpecError("model.uri", "is required, e.g. s3://bucket/models/resnet or pvc://models/resnet")
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in MODEL_URI_SCHEMES:
        raise SpecError(
            "model.uri",
            f"scheme {scheme or '(none)'!r} of {uri!r} is not supported; use one of "
            + ", ".join(f"{s}://" for s in MODEL_URI_SCHEMES),
        )
    fmt = cast(ModelFormat, _enum(raw, "format", FORMATS, "savedmodel", "model"))
    digest = raw.get("digest")
    if digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", str(digest)):
        raise SpecError("model.digest", f"must look like sha256:<64 hex digits>, got {digest!r}")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in (raw.get("inputShapes") or {}).items():
        if not isinstance(dims, list) or not dims or not all(isinstance(d, int) and (d == -1 or d > 0) for d in dims):
            raise SpecError(f"model.inputShapes.{name}", f"must be a list of positive sizes or -1, got {dims!r}")
        shapes[str(name)] = tuple(dims)
    return ModelSource(
        uri=uri, format=fmt, digest=str(digest) if digest else None,
        signature=str(raw.get("signature") or "serving_default"), input_shapes=shapes,
    )


def _parse_engine(raw: Mapping[str, Any]) -> EngineSpec:
    batch_raw = raw.get("batch") or {}
    batch = BatchProfile(
        min=_int(batch_raw, "min", 1, "engine.batch", minimum=1),
        opt=_int(batch_raw, "opt", 8, "engine.batch", minimum=1),
        max=_int(batch_raw, "max", 32, "engine.batch", minimum=1),
    )
    if not batch.min <= batch.opt <= batch.max:
        raise SpecError("engine.batch", f"needs min <= opt <= max, got {batch.min}/{batch.opt}/{batch.max}")
    targets_raw = raw.get("targets") or [AUTO]
    if not isinstance(targets_raw, list):
        raise SpecError("engine.targets", "must be a list such as [auto] or [\"8.9\", cpu]")
    explicit: list[Target] = []
    for item in targets_raw:
        text = str(item)
        if not isinstance(item, str) or not _TARGET.match(text):
            raise SpecError("engine.targets", f"{text!r} is not 'auto', 'cpu', 'MAJOR.MINOR' or 'MAJOR.MINOR/PRODUCT'")
        if text != AUTO:
            explicit.append(Target.parse(text))
    options = validation.check_string_map(raw.get("builderOptions"), "engine.builderOptions")
    return EngineSpec(
        precision=cast(Precision, _enum(raw, "precision", PRECISIONS, "fp32", "engine")),
        batch=batch,
        workspace_mib=_int(raw, "workspaceMiB", 4096, "engine", minimum=16),
        method=cast(Method, _enum(raw, "method", METHODS, "onnx", "engine")),
        auto_targets=AUTO in [str(t) for t in targets_raw],
        targets=tuple(sorted(set(explicit))),
        hardware_compatibility=cast(
            HardwareCompatibility, _enum(raw, "hardwareCompatibility", HW_COMPAT, "none", "engine")),
        build_timeout_seconds=_int(raw, "buildTimeoutSeconds", 3600, "engine", minimum=60),
        backoff_limit=_int(raw, "backoffLimit", 2, "engine"),
        retry_after_seconds=_int(raw, "retryAfterSeconds", 600, "engine", minimum=10),
        builder_image=_optional_string(raw, "builderImage", "engine"),
        builder_options={str(k): str(v) for k, v in options.items()},
        sample_data_uri=_optional_string(raw, "sampleDataUri", "engine"),
        calibration_uri=_optional_string(raw, "calibrationUri", "engine"),
        pod_labels=_strings(raw, "podLabels", "engine"),
        pod_annotations=_strings(raw, "podAnnotations", "engine"),
        tolerations=tuple(raw["tolerations"]) if isinstance(raw.get("tolerations"), list) else None,
    )


def _serving_resources(raw: object) -> dict[str, Any]:
    resources = validation.check_resources(raw)
    validation.check_gpus(resources, "serving.resources", allowed="1")
    return resources


def _sidecar_resources(raw: object, where: str) -> dict[str, Any]:
    resources = validation.check_resources(raw, where)
    validation.check_gpus(resources, where, allowed=None)
    return resources


def _parse_serving(raw: Mapping[str, Any]) -> ServingSpec:
    port = _int(raw, "port", 8000, "serving", minimum=1)
    if port > 65535:
        raise SpecError("serving.port", f"must be <= 65535, got {port}")
    batching = _section(raw, "batching")
    return ServingSpec(
        image=_optional_string(raw, "image", "serving"), port=port,
        resources=_serving_resources(raw.get("resources")),
        node_selector=validation.check_string_map(raw.get("nodeSelector"), "serving.nodeSelector"),
        tolerations=validation.check_objects(raw.get("tolerations"), "serving.tolerations"),
        env=validation.check_env(raw.get("env")),
        max_queue_delay_ms=_number(batching, "maxQueueDelayMs", 0.0, "serving.batching"),
        max_queue_size=_int(batching, "maxQueueSize", 256, "serving.batching", minimum=1),
        keep_awake=cast(KeepAwake, _enum(raw, "keepAwake", KEEP_AWAKE, "auto", "serving")),
        slot_handoff=cast(SlotHandoff, _enum(raw, "slotHandoff", SLOT_HANDOFF, DEFAULT_SLOT_HANDOFF, "serving")),
        shared_memory=cast(SharedMemory, _enum(raw, "sharedMemory", SHARED_MEMORY, "off", "serving")),
        http_frontend=cast(HttpFrontend, _enum(raw, "httpFrontend", HTTP_FRONTENDS, DEFAULT_HTTP_FRONTEND, "serving")),
        sidecars=_parse_sidecars(raw.get("sidecars"), port),
        pod_labels=_strings(raw, "podLabels", "serving"),
        pod_annotations=_strings(raw, "podAnnotations", "serving"),
    )


def grpc_port(http_port: int) -> int:
    """The pod's and the Service's gRPC port: Triton's 8001, or the next one when HTTP has taken it."""
    return names.SERVE_GRPC_PORT if http_port != names.SERVE_GRPC_PORT else http_port + 1


def _parse_sidecars(raw: object, port: int) -> tuple[Sidecar, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise SpecError("serving.sidecars", "must be a list of containers ({name, image, ...})")
    if len(raw) > MAX_SIDECARS:
        raise SpecError("serving.sidecars", f"at most {MAX_SIDECARS} sidecars, got {len(raw)}")
    taken = {port, grpc_port(port)}
    out: list[Sidecar] = []
    for i, item in enumerate(raw):
        where = f"serving.sidecars[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, "must be an object with a name and an image")
        name = validation.check_container_name(item.get("name"), f"{where}.name", [s.name for s in out])
        image = item.get("image")
        if not isinstance(image, str) or not image:
            raise SpecError(f"{where}.image", "is required (the sidecar's container image)")
        ports = validation.check_container_ports(item.get("ports"), f"{where}.ports", taken)
        taken |= {int(p["containerPort"]) for p in ports}
        out.append(Sidecar(
            name=name, image=image,
            command=validation.check_strings(item.get("command"), f"{where}.command"),
            args=validation.check_strings(item.get("args"), f"{where}.args"),
            env=validation.check_plain_env(item.get("env"), f"{where}.env"),
            ports=ports,
            resources=_sidecar_resources(item.get("resources"), f"{where}.resources"),
        ))
    return tuple(out)


def _parse_scaling(raw: Mapping[str, Any]) -> ScalingSpec:
    spec = ScalingSpec(
        mode=cast(ScalingMode, _enum(raw, "mode", SCALING_MODES, "builtin", "scaling")),
        min_replicas=_int(raw, "minReplicas", 1, "scaling"),
        max_replicas=_int(raw, "maxReplicas", 4, "scaling", minimum=1),
        metric=cast(ScalingMetric, _enum(raw, "metric", SCALING_METRICS, "inflight", "scaling")),
        target=_number(raw, "target", 4.0, "scaling"),
        scale_up_window_seconds=_int(raw, "scaleUpWindowSeconds", 0, "scaling"),
        scale_down_window_seconds=_int(raw, "scaleDownWindowSeconds", 300, "scaling"),
    )
    if spec.min_replicas > spec.max_replicas:
        raise SpecError("scaling", f"minReplicas ({spec.min_replicas}) must be <= maxReplicas ({spec.max_replicas})")
    if spec.target <= 0:
        raise SpecError("scaling.target", f"must be > 0, got {spec.target}")
    return spec


def _optional_string(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise SpecError(f"{where}.{key}", f"must be a string, got {type(value).__name__}")
    return value or None
