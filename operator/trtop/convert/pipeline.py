"""The conversion pipeline: lookup -> fetch -> load -> onnx -> precision -> build -> verify -> benchmark -> publish.

``convert(request, store, workdir)`` runs the stages in order, logs each with its
duration, and returns what was published (or found already published: same key, no
rebuild). Every failure is a ``ConvertError`` carrying the stage it happened in.
The TensorRT and GPU parts are reached only through ``tensorrt_build`` and the shared
``trtop.gpu`` package: its NVML reader and device rule check the node, and its
``TensorRTEngine`` (the server's TensorRT runtime) runs the parity check and the
benchmark at every batch bucket the record names, so what is verified is what will be
served. ``read_gpu`` can be replaced for tests.
Called by ``cli.py`` (the build Job's program).
"""
from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trtop import names, versions
from trtop.api.engine import (
    CONVERTER_VERSION, BatchProfile, EngineKey, EngineRecord, EngineRequest, TensorSpec, batch_buckets,
)
from trtop.api.fetch import FetchPolicy, redact
from trtop.api.targets import Target
from trtop.convert import onnxmodel, parity, source
from trtop.convert.benchmark import measure
from trtop.convert.errors import (
    BadRequestError, BuildError, ConvertError, DeviceMismatchError, InfraError, MissingDependencyError, NetworkError,
    NoDeviceError, ParityError, ResourceError,
)
from trtop.convert.formats import locate_model
from trtop.convert.guard import PERMISSIVE
from trtop.convert.precision import PrecisionPlan, plan_precision
from trtop.convert.quantization import apply_precision
from trtop.convert.request import BuilderSettings, check_request
from trtop.gpu.device import Device
from trtop.gpu.errors import CudaError, EngineLoadError, EngineRunError, GpuError, MissingLibraryError
from trtop.gpu.nvml import GpuInfo, read_gpu as nvml_read_gpu
from trtop.store import EngineStore, StoreError
from trtop.store.integrity import artifact_digest

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
Runner = Callable[[Feeds], dict[str, np.ndarray]]
GpuReader = Callable[[], GpuInfo | None]


@dataclass
class Outcome:
    key: EngineKey
    reused: bool
    record: EngineRecord
    stages: dict[str, float] = field(default_factory=dict)


class Stages:
    """Logs each stage's start and end with its duration, and tags errors with the stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log.info("[%s] started", name)
        start = time.monotonic()
        try:
            yield
        except ConvertError as e:
            e.stage = e.stage or name
            raise
        except StoreError as e:
            raise NetworkError(str(e), stage=name) from e
        except GpuError as e:
            raise _gpu_failure(e, name) from e
        except MemoryError as e:
            raise ResourceError(f"out of host memory during {name}: give the build Job more memory",
                                stage=name) from e
        finally:
            self.seconds[name] = round(time.monotonic() - start, 3)
        log.info("[%s] done in %.2f s", name, self.seconds[name])


@dataclass
class _Built:
    artifact: str
    runner: Runner
    engine_versions: dict[str, str]
    device: dict[str, str]
    buckets: tuple[int, ...] = ()  # batch sizes the artifact runs at, each verified (TensorRT)
    close: Callable[[], None] = lambda: None


def convert(request: EngineRequest, store: EngineStore, workdir: Path, *,
            read_gpu: GpuReader = nvml_read_gpu, policy: FetchPolicy = PERMISSIVE) -> Outcome:
    """``policy``: what the request's URIs may reach (the build Job passes the operator's)."""
    stage = Stages()
    with stage("lookup"):
        existing = store.get_record(request.key)
    if existing is not None:
        log.info("engine %s is already published in %s: reusing it, nothing to build", request.key, store.uri)
        return Outcome(request.key, True, existing, stage.seconds)

    started = time.monotonic()
    with stage("check"):
        settings = check_request(request)
        if request.method == "tf-trt":
            from trtop.convert import tfmodel

            tfmodel.require_tftrt()
        plan, trt_version = _plan(request)
    with stage("fetch"):
        local, digest = source.fetch_model(request.model.uri, workdir, policy, request.model.digest)
        log.info("model %s: %s", redact(request.model.uri), digest)
    with stage("load"):
        model_path = locate_model(local, request.model.format)
        tf_model = _load_tf(request, model_path, workdir) if request.model.format != "onnx" else None
    with stage("onnx"):
        if request.method == "tf-trt":
            assert tf_model is not None  # check_request refuses tf-trt for ONNX models
            inputs, outputs = tf_model.inputs, tf_model.outputs  # TF-TRT works on the SavedModel itself
            prepared = model_path
        else:
            prepared = _to_onnx(request, tf_model, model_path, workdir)
            inputs, outputs = onnxmodel.io_specs(onnxmodel.load_onnx(prepared))
        log.info("inputs %s; outputs %s", _io_text(inputs), _io_text(outputs))
        reference = tf_model.reference if tf_model is not None else _ort_runner(prepared, "disable")
    with stage("precision"):
        calibration = _calibration(request, inputs, workdir, policy) if plan.needs_calibration else None
        build_input = apply_precision(plan, prepared, workdir / "model.precision.onnx", calibration)
    out = workdir / "out"
    out.mkdir()
    with stage("build"):
        built = _build(request, settings, plan, trt_version, build_input, inputs, out, store, read_gpu, tf_model)
    with stage("verify"):
        feeds, origin = _verify_inputs(request, inputs, workdir, policy)
        atol, rtol = (settings.verify_atol or plan.tolerance[0]), (settings.verify_rtol or plan.tolerance[1])
        result = parity.compare(reference(feeds), built.runner(feeds), atol, rtol)
        for size in (b for b in built.buckets if b != result.batch):  # each bucket: its own context, graph, profile
            extra = parity.resize_batch(feeds, size)  # the same (sample) rows: no new input distribution
            result = parity.worst(result, parity.compare(reference(extra), built.runner(extra), atol, rtol))
        log.info("parity on %s inputs (batch %d): max abs error %.3g, max rel error %.3g (atol %g, rtol %g)",
                 origin, result.batch, result.max_abs_error, result.max_rel_error, atol, rtol)
        if not result.passed:
            raise ParityError(
                f"the {request.precision} artifact differs from the original model beyond tolerance: max abs error "
                f"{result.max_abs_error:.3g} on output {result.worst_output!r} (atol {atol:g}, rtol {rtol:g}). "
                "Try a higher precision, or loosen builder options verify_atol / verify_rtol if this is expected."
            )
    with stage("benchmark"):
        bench: dict[str, Any] = {}
        for label, batch in (("batch_opt", request.batch.opt), ("batch_max", request.batch.max)):
            timing = measure(built.runner, parity.generate_inputs(inputs, batch))
            bench[label] = timing.as_record()
            log.info("batch %d: p50 %.3f ms, p99 %.3f ms, %.1f samples/s", batch, timing.p50_ms, timing.p99_ms,
                     timing.throughput)
        built.close()
    with stage("publish"):
        sha256, size = artifact_digest(out / built.artifact)
        record = EngineRecord(
            key=request.key, target=request.target, backend=request.backend, artifact=built.artifact,
            precision=request.precision, batch=request.batch, inputs=inputs, outputs=outputs, model_digest=digest,
            versions={**_base_versions(tf_model is not None), **built.engine_versions}, parity=result.as_record(),
            benchmark=bench, build_seconds=round(time.monotonic() - started, 2), device=built.device,
            buckets=built.buckets or engine_buckets(request.batch),
            created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), sha256=sha256, size=size,
        )
        (out / names.ENGINE_METADATA_FILE).write_text(record.to_json(), encoding="utf-8")
        published = store.publish(request.key, out)
        if not published:
            winner = store.get_record(request.key)
            log.info("another build published %s first: keeping its engine, discarding this one", request.key)
            return Outcome(request.key, True, winner or record, stage.seconds)
        log.info("published %s to %s/%s", request.key, store.uri.rstrip("/"), request.key)
    return Outcome(request.key, False, record, stage.seconds)


# --- stages' helpers ---------------------------------------------------------------------------
def _plan(request: EngineRequest) -> tuple[PrecisionPlan, str | None]:
    if request.backend == "tensorrt" and request.method == "onnx":
        from trtop.convert.tensorrt_build import require_tensorrt, tensorrt_major

        version = require_tensorrt()
        return plan_precision(request.precision, "tensorrt", tensorrt_major(version)), version
    if request.method == "tf-trt":
        return PrecisionPlan(request.precision), None  # TF-TRT takes the precision itself
    return plan_precision(request.precision, request.backend), None


def _to_onnx(request: EngineRequest, tf_model: Any, model_path: Path, workdir: Path) -> Path:
    """The model as ONNX with a dynamic batch and filled shapes, written to the work folder."""
    if tf_model is not None:
        from trtop.convert import tfmodel

        proto = tfmodel.to_onnx(tf_model)
    else:
        proto = onnxmodel.load_onnx(model_path)
        onnxmodel.check_ops(proto, model_path.name)
    proto = onnxmodel.prepare(proto, request.model.input_shapes)
    prepared = workdir / "model.prepared.onnx"
    onnxmodel.save_onnx(proto, prepared)
    return prepared


def _load_tf(request: EngineRequest, path: Path, workdir: Path) -> Any:
    from trtop.convert import tfmodel

    if request.model.format == "keras":
        return tfmodel.load_keras(path, workdir)
    return tfmodel.load_savedmodel(path, request.model.signature)


def _build(request: EngineRequest, settings: BuilderSettings, plan: PrecisionPlan, trt_version: str | None,
           onnx_path: Path, inputs: tuple[TensorSpec, ...], out: Path, store: EngineStore, read_gpu: GpuReader,
           tf_model: Any) -> _Built:
    if request.method == "tf-trt":
        from trtop.convert import tfmodel

        tfmodel.convert_tftrt(tf_model.saved_model_dir, tf_model.signature, out / "model.savedmodel",
                              request.precision, request.workspace_mib)
        converted = tfmodel.load_savedmodel(out / "model.savedmodel", tf_model.signature)
        return _Built("model.savedmodel", converted.reference, {"tf-trt": "1"}, _check_gpu(request, read_gpu))
    if request.backend == "onnxruntime":
        import onnxruntime

        artifact = out / "model.onnx"
        onnxmodel.ort_session(onnx_path, level=settings.ort_optimization_level, optimized_path=artifact)
        return _Built("model.onnx", _ort_runner(artifact, "disable"), {"onnxruntime": onnxruntime.__version__},
                      {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count() or 0)})

    from trtop.convert.tensorrt_build import BuildOptions, build_engine
    from trtop.gpu.tensorrt import TensorRTEngine

    device = _check_gpu(request, read_gpu)
    buckets = engine_buckets(request.batch)
    cache_name = f"{names.TIMING_CACHES}/{Target.from_dict({'cc': device['cc'], 'product': device['name']}).slug}" \
                 f"-trt{trt_version}.cache"
    result = build_engine(onnx_path, BuildOptions(
        inputs=inputs, batch=request.batch, workspace_mib=request.workspace_mib, plan=plan,
        hardware_compatibility=request.hardware_compatibility, optimization_level=settings.optimization_level,
        version_compatible=settings.version_compatible, timing_cache=store.get_blob(cache_name),
        profile_buckets=buckets if settings.profile_per_bucket else (),
    ))
    (out / "model.plan").write_bytes(result.engine)
    if result.timing_cache:
        store.put_blob(cache_name, result.timing_cache)
    log.info("engine: %.1f MiB, %d builder warnings", len(result.engine) / 2**20, len(result.warnings))
    engine = TensorRTEngine(result.engine, origin="the engine it just built")
    engine.prepare(buckets)  # as the server will: a context, pinned buffers and a CUDA graph per bucket
    return _Built("model.plan", engine, {"tensorrt": str(trt_version)}, device, buckets, engine.close)


def _check_gpu(request: EngineRequest, read_gpu: GpuReader) -> dict[str, str]:
    gpu = read_gpu()
    if gpu is None:
        raise NoDeviceError(
            f"no GPU is visible (NVML found none), but target {request.target} needs one: the build Job must "
            "request nvidia.com/gpu and run on a GPU node with the NVIDIA driver"
        )
    log.info("GPU: %s, compute capability %s, driver %s", gpu.name, gpu.cc, gpu.driver)
    if not Device.of_gpu(gpu).runs(request.target):
        raise DeviceMismatchError(
            f"this Job runs on {gpu.name} (compute capability {gpu.cc}), but the engine is for target "
            f"{request.target}: the Job landed on the wrong node; check its node affinity and the GFD labels"
        )
    return gpu.as_dict()


def engine_buckets(batch: BatchProfile) -> tuple[int, ...]:
    """The batch sizes the server pads to and warms (``batch_buckets``), within the profile's min..max."""
    return tuple(b for b in batch_buckets(batch.max) if b >= batch.min)


def _gpu_failure(error: GpuError, stage: str) -> ConvertError:
    """The shared GPU code's errors as the converter's exit classes."""
    message = str(error)
    if isinstance(error, MissingLibraryError):
        return MissingDependencyError(message + ". Use the converter image (built on nvcr.io/nvidia/tensorrt)",
                                      stage=stage)
    if isinstance(error, CudaError):
        if error.out_of_memory:
            return ResourceError(message + ": give the build Job a GPU with more free memory", stage=stage)
        return InfraError(message, stage=stage)
    if isinstance(error, (EngineLoadError, EngineRunError)):
        return BuildError(f"the engine TensorRT built does not run: {message}", stage=stage)
    return InfraError(message, stage=stage)


def _ort_runner(path: Path, level: str) -> Runner:
    session = onnxmodel.ort_session(path, level=level)
    return lambda feeds: onnxmodel.run_ort(session, feeds)


def _verify_inputs(request: EngineRequest, inputs: tuple[TensorSpec, ...], workdir: Path,
                   policy: FetchPolicy) -> tuple[Feeds, str]:
    if request.sample_data_uri:
        path = source.fetch(request.sample_data_uri, workdir / "sample", policy)
        return parity.load_sample_inputs(path, inputs, request.batch.max), "sample"
    return parity.generate_inputs(inputs, request.batch.opt), "generated"


def _calibration(request: EngineRequest, inputs: tuple[TensorSpec, ...], workdir: Path,
                 policy: FetchPolicy) -> dict[str, np.ndarray]:
    uri = request.calibration_uri or request.sample_data_uri
    if not uri:
        raise BadRequestError(
            f"precision {request.precision} needs calibration data: set engine.calibrationUri to an .npz file with "
            "one array per model input (a few hundred representative samples)"
        )
    path = source.fetch(uri, workdir / "calibration", policy)
    return parity.load_sample_inputs(path, inputs, max_batch=1 << 30)


def _base_versions(from_tensorflow: bool) -> dict[str, str]:
    import onnx

    found = {"converter": CONVERTER_VERSION, "trtop": versions.TRTOP_VERSION, "onnx": onnx.__version__,
             "opset": str(onnxmodel.OPSET)}
    if from_tensorflow:
        from trtop.convert import tfmodel

        found.update(tfmodel.tensorflow_versions())
    return found


def _io_text(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)
