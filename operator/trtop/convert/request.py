"""The engine request as the converter reads it: from ``--request FILE|-``, ``TRTOP_ENGINE_REQUEST`` or flags.

The operator passes JSON (``EngineRequest.to_json``) in the environment; a person can
pass the same JSON as a file, or flags (``--model --format --target --precision
--store``...), in which case the key is computed the way the operator would, with the
versions the converter image carries. ``check_request`` rejects what no build could
honour before anything is fetched, and ``BuilderSettings`` parses ``builder_options``
(strings in the spec) into typed values. Called by ``cli.py`` and ``pipeline.py``.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, get_args

from trtop import names, versions
from trtop.api.engine import (
    Backend, BatchProfile, EngineRequest, HardwareCompatibility, Method, ModelFormat, ModelSource, Precision,
    engine_key,
)
from trtop.api.targets import Target
from trtop.convert.errors import BadRequestError

BUILDER_OPTIONS = {
    "optimization_level": "TensorRT builder optimization level 0..5 (default 3)",
    "version_compatible": "true: embed the lean runtime in the engine (TensorRT VERSION_COMPATIBLE)",
    "profile_per_bucket": "true: one TensorRT optimization profile per served batch size (fixed shapes, tuned "
                          "kernels each; longer build, bigger engine) instead of one min..max profile",
    "ort_optimization_level": "ONNX Runtime graph optimization: disable, basic, extended (default), all",
    "verify_atol": "absolute tolerance of the parity check (default per precision)",
    "verify_rtol": "relative tolerance of the parity check (default per precision)",
}


@dataclass(frozen=True)
class BuilderSettings:
    optimization_level: int | None = None
    version_compatible: bool = False
    profile_per_bucket: bool = False
    ort_optimization_level: str = "extended"
    verify_atol: float | None = None
    verify_rtol: float | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> BuilderSettings:
        unknown = sorted(set(options) - set(BUILDER_OPTIONS))
        if unknown:
            known = "; ".join(f"{k}: {v}" for k, v in BUILDER_OPTIONS.items())
            raise BadRequestError(f"unknown builder options {unknown}; known ones are {known}")
        try:
            level = options.get("optimization_level")
            settings = cls(
                optimization_level=None if level in (None, "") else int(level),
                version_compatible=_flag(options.get("version_compatible")),
                profile_per_bucket=_flag(options.get("profile_per_bucket")),
                ort_optimization_level=str(options.get("ort_optimization_level", "extended")),
                verify_atol=_float(options.get("verify_atol")),
                verify_rtol=_float(options.get("verify_rtol")),
            )
        except ValueError as e:
            raise BadRequestError(f"builder options {dict(options)}: {e}") from e
        if settings.optimization_level is not None and not 0 <= settings.optimization_level <= 5:
            raise BadRequestError(f"builder option optimization_level {settings.optimization_level} is not in 0..5")
        return settings


def read_request(args: argparse.Namespace, env: Mapping[str, str]) -> EngineRequest:
    """``--request`` wins, then ``TRTOP_ENGINE_REQUEST``, then the flags; ``--store`` overrides any store."""
    text = None
    if args.request == "-":
        text = _stdin()
    elif args.request:
        try:
            with open(args.request, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise BadRequestError(f"--request {args.request}: {e.strerror}") from e
    elif env.get(names.ENV_ENGINE_REQUEST):
        text = env[names.ENV_ENGINE_REQUEST]
    if text is not None:
        try:
            request = EngineRequest.from_json(text)
        except (ValueError, KeyError, TypeError) as e:
            raise BadRequestError(f"the engine request is not valid JSON of an EngineRequest: {e!r}") from e
    else:
        request = request_from_flags(args)
    store = args.store or request.store_uri or env.get(names.ENV_STORE_URI, "")
    if not store:
        raise BadRequestError(f"no engine store: pass --store URI, or set store_uri / {names.ENV_STORE_URI}")
    return replace(request, store_uri=store)


def request_from_flags(args: argparse.Namespace) -> EngineRequest:
    if not args.model:
        raise BadRequestError(f"give --request FILE, {names.ENV_ENGINE_REQUEST}, or at least --model URI")
    try:
        target = Target.parse(args.target)
    except ValueError as e:
        raise BadRequestError(f"--target {args.target!r}: {e}") from e
    backend: Backend = args.backend or ("onnxruntime" if target.is_cpu else "tensorrt")
    shapes = {}
    for item in args.input_shape or []:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise BadRequestError(f"--input-shape {item!r} is not NAME=D0,D1,... (use -1 for the batch)") from None
    try:
        lo, opt, hi = (int(v) for v in args.batch.split(","))
    except ValueError:
        raise BadRequestError(f"--batch {args.batch!r} is not MIN,OPT,MAX") from None
    model = ModelSource(uri=args.model, format=_choice(args.format or _guess_format(args.model), ModelFormat, "--format"),
                        digest=args.digest, signature=args.signature, input_shapes=shapes)
    options = dict(kv.split("=", 1) for kv in args.builder_option or [] if "=" in kv)
    fields: dict[str, Any] = dict(
        model=model, target=target, backend=_choice(backend, Backend, "--backend"),
        precision=_choice(args.precision, Precision, "--precision"), batch=BatchProfile(lo, opt, hi),
        method=_choice(args.method, Method, "--method"), workspace_mib=args.workspace_mib,
        hardware_compatibility=_choice(args.hardware_compatibility, HardwareCompatibility, "--hardware-compatibility"),
        builder_options=options,
    )
    engine_version = versions.ONNXRUNTIME_VERSION if backend == "onnxruntime" else versions.TENSORRT_VERSION
    scope = getattr(args, "scope", None) or "cli"
    key = engine_key(**fields, trt_version=engine_version, scope=scope)
    return EngineRequest(key=key, **fields, calibration_uri=args.calibration_data, sample_data_uri=args.sample_data,
                         store_uri=args.store or "", scope=scope)


def check_request(request: EngineRequest) -> BuilderSettings:
    """Contradictions and impossible values, found before any download."""
    b = request.batch
    if not 1 <= b.min <= b.opt <= b.max:
        raise BadRequestError(f"batch profile min={b.min} opt={b.opt} max={b.max}: need 1 <= min <= opt <= max")
    if request.workspace_mib <= 0:
        raise BadRequestError(f"workspace_mib {request.workspace_mib} must be positive")
    if request.backend not in get_args(Backend):
        raise BadRequestError(f"backend {request.backend!r} is not one of {get_args(Backend)}")
    if request.backend == "tensorrt" and request.target.is_cpu:
        raise BadRequestError("backend 'tensorrt' cannot build for target 'cpu': use backend 'onnxruntime'")
    if request.model.format not in get_args(ModelFormat):
        raise BadRequestError(f"model.format {request.model.format!r} is not one of {get_args(ModelFormat)}")
    if request.method == "tf-trt" and request.model.format == "onnx":
        raise BadRequestError("method 'tf-trt' converts TensorFlow models; for an ONNX model use method 'onnx'")
    if request.method == "tf-trt" and request.backend != "tensorrt":
        raise BadRequestError("method 'tf-trt' builds TensorRT segments: it needs a GPU target")
    if request.hardware_compatibility not in get_args(HardwareCompatibility):
        raise BadRequestError(f"hardware_compatibility {request.hardware_compatibility!r} is not one of "
                              f"{get_args(HardwareCompatibility)}")
    return BuilderSettings.parse(request.builder_options)


def _choice(value: str, literal: Any, flag: str) -> Any:
    options = get_args(literal)
    if value not in options:
        raise BadRequestError(f"{flag} {value!r} is not one of {list(options)}")
    return value


def _guess_format(uri: str) -> str:
    path = uri.rstrip("/").lower()
    if path.endswith(".onnx"):
        return "onnx"
    if path.endswith((".keras", ".h5", ".hdf5")):
        return "keras"
    return "savedmodel"


def _flag(value: Any) -> bool:
    return str(value if value is not None else "false").lower() in ("1", "true", "yes")


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _stdin() -> str:
    import sys

    return sys.stdin.read()

