"""The TensorRT boundary of the converter: ONNX file in, serialized engine (plan) out.

Everything that calls TensorRT's builder lives here, so that tests can put a fake
``tensorrt`` module in ``sys.modules`` and check the calls for TensorRT 10 and 11, and
mypy can check them against ``tensorrt-stubs``. TensorRT is imported inside the
functions: the module imports fine where TensorRT is absent.

What a build does: parse the ONNX (parser errors name the failing nodes), one
optimization profile over the batch range (min/opt/max, other dims fixed) or, with
``profile_buckets``, one fixed-shape profile per batch size the server runs at (the
runtime gives each bucket the profile built for it), the
workspace limit, the precision plan (builder flags on 10, strongly typed on 11),
hardware compatibility, a timing cache loaded from and returned to the caller, and a
check of ``build_serialized_network``'s None with the logger's errors in the message.
Called by ``pipeline.py``.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtop.api.engine import BatchProfile, HardwareCompatibility, TensorSpec
from trtop.convert.errors import (
    BadRequestError, BuildError, MissingDependencyError, ResourceError, UnsupportedOpError,
    UnsupportedPrecisionError,
)
from trtop.convert.precision import PrecisionPlan

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

HW_COMPAT_LEVELS: dict[str, str] = {
    "none": "NONE",
    "ampere-plus": "AMPERE_PLUS",
    "same-compute-capability": "SAME_COMPUTE_CAPABILITY",  # TensorRT 10.9 and later
}
_RESOURCE_HINTS = ("insufficient workspace", "out of memory", "outofmemory", "cudaerrormemoryallocation",
                   "cuda_error_out_of_memory", "failed to allocate")


@dataclass(frozen=True)
class BuildOptions:
    inputs: tuple[TensorSpec, ...]  # from the prepared ONNX: batch dim -1, the rest fixed
    batch: BatchProfile
    workspace_mib: int
    plan: PrecisionPlan
    hardware_compatibility: HardwareCompatibility = "none"
    optimization_level: int | None = None  # builder_optimization_level 0..5 (TensorRT's default: 3)
    version_compatible: bool = False  # embed the lean runtime (the server must allow host code)
    timing_cache: bytes | None = None  # from the store; device specific
    profile_buckets: tuple[int, ...] = ()  # one profile per batch size (min = opt = max) instead of min..max


@dataclass(frozen=True)
class BuildResult:
    engine: bytes
    timing_cache: bytes | None
    warnings: tuple[str, ...]


def require_tensorrt() -> str:
    """The installed TensorRT version; MissingDependencyError when there is no usable TensorRT."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise MissingDependencyError(
            f"backend 'tensorrt' needs TensorRT's Python package, which is not installed ({e}). Use the converter "
            "image (built on nvcr.io/nvidia/tensorrt), or target 'cpu' for an ONNX Runtime engine."
        ) from e
    version = getattr(trt, "__version__", None)
    if version is None or not hasattr(trt, "Builder"):
        where = getattr(trt, "__file__", None) or ", ".join(getattr(trt, "__path__", None) or ["?"])
        raise MissingDependencyError(
            f"the 'tensorrt' module found at {where} has no Builder: it is type stubs or a stub wheel, not "
            "TensorRT. Use the converter image (built on nvcr.io/nvidia/tensorrt)."
        )
    return str(version)


def tensorrt_major(version: str) -> int:
    return int(version.split(".")[0])


def build_engine(onnx_path: Path, options: BuildOptions) -> BuildResult:
    """Build a serialized engine for the GPU this process runs on."""
    version = require_tensorrt()
    import tensorrt as trt

    major = tensorrt_major(version)
    logger, errors, warnings = _make_logger()
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if options.plan.strongly_typed and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        found = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise UnsupportedOpError(f"TensorRT {version}'s ONNX parser rejected the model: {'; '.join(found)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    for name in options.plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise UnsupportedPrecisionError(
                f"precision {options.plan.precision} needs builder flag {name}, which TensorRT {version} lacks"
            )
        config.set_flag(flag)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    level = getattr(trt.HardwareCompatibilityLevel, HW_COMPAT_LEVELS[options.hardware_compatibility], None)
    if level is None:
        raise BadRequestError(
            f"hardware compatibility {options.hardware_compatibility!r} is not available in TensorRT {version}"
        )
    config.hardware_compatibility_level = level
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level

    specs = {s.name: s for s in options.inputs}
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    fixed = {t.name: _fixed_dims(t.name, tuple(t.shape[j] for j in range(len(t.shape))), specs.get(t.name))
             for t in inputs}
    b = options.batch
    ranges = [(n, n, n) for n in options.profile_buckets] or [(b.min, b.opt, b.max)]
    for low, opt, high in ranges:
        profile = builder.create_optimization_profile()
        for name, dims in fixed.items():
            profile.set_shape(name, trt.Dims([low, *dims]), trt.Dims([opt, *dims]), trt.Dims([high, *dims]))
        config.add_optimization_profile(profile)

    cache = config.create_timing_cache(options.timing_cache or b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("the stored timing cache does not match this device or TensorRT %s: starting a fresh one", version)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    log.info("building a TensorRT %s engine (major %d): precision %s, flags %s, strongly typed %s, "
             "workspace %d MiB, hardware compatibility %s, profiles %s", version, major, options.plan.precision,
             list(options.plan.builder_flags) or "none", bool(flags), options.workspace_mib,
             options.hardware_compatibility, ranges)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise _failure(version, errors)
    timing = config.get_timing_cache()
    return BuildResult(bytes(serialized), bytes(timing.serialize()) if timing is not None else None,
                       tuple(warnings))


def _fixed_dims(name: str, shape: tuple[int, ...], spec: TensorSpec | None) -> tuple[int, ...]:
    dims = list(shape[1:])
    if spec is not None and len(spec.shape) == len(shape):
        dims = [d if d > 0 else s for d, s in zip(dims, spec.shape[1:])]
    if any(d <= 0 for d in dims):
        raise BadRequestError(f"input {name!r} has open dimensions {shape} beyond the batch: set model.input_shapes")
    return tuple(dims)


def _failure(version: str, errors: list[str]) -> Exception:
    text = "; ".join(errors[-5:]) or "no error was logged"
    if any(hint in text.lower() for hint in _RESOURCE_HINTS):
        return ResourceError(
            f"TensorRT {version} ran out of memory or workspace while building: {text}. Raise engine.workspaceMiB "
            "or give the build Job a GPU with more free memory."
        )
    return BuildError(f"TensorRT {version} could not build the engine: {text}")


def _make_logger() -> tuple[trt.ILogger, list[str], list[str]]:
    """A TensorRT logger that keeps errors (for the failure message) and warnings, and forwards all to logging."""
    import tensorrt as trt

    severity = trt.ILogger.Severity
    errors: list[str] = []
    warnings: list[str] = []

    class CapturingLogger(trt.ILogger):  # type: ignore[misc, unused-ignore]  # Any where the stubs are absent
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: trt.ILogger.Severity, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                warnings.append(msg)
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return CapturingLogger(), errors, warnings
