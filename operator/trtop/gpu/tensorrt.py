"""A TensorRT engine run at a set of batch sizes: the one runtime the converter verifies with and the server serves with.

``TensorRTEngine(plan)`` deserializes a plan (TensorRT 10/11 tensor-name API), reads its
I/O tensors and optimization profiles, and runs batches through ``bucket.Bucket``: one
execution context per batch size, on the profile that fits it best (a profile built for
exactly that size where the converter made one per bucket, else the profile covering
it), with device buffers, page-locked host buffers and a CUDA graph each. All contexts
share one stream and one activation-memory block (runs are serialised), so N buckets
cost N sets of I/O buffers, not N activation workspaces.

``prepare(sizes)`` makes the buckets up front (the server: before warm-up, with its
padded batch sizes; the converter: before its parity check, with the record's buckets);
``run`` pads a batch up to the smallest bucket that holds it; ``run_parts`` takes the
batch as its requests and copies each straight into the pinned buffers (no merged array
in between: one host copy per request on the way in). Without ``prepare`` the
buckets are ``batch_buckets(max_batch)``, made on first use. Used by
``trtop.convert.pipeline`` (verify, benchmark) and ``trtop.serve.backends.tensorrt_impl``.
Importing this module needs TensorRT (ImportError otherwise, also for type stubs).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorrt as trt

from trtop.api.engine import TensorSpec, batch_buckets
from trtop.gpu.bucket import Bucket
from trtop.gpu.cuda import Array, Cuda, default_cuda
from trtop.gpu.errors import EngineLoadError, EngineRunError

if not hasattr(trt, "Runtime"):  # tensorrt-stubs installs an empty `tensorrt` namespace package
    raise ImportError("the 'tensorrt' module found here is type stubs or a stub wheel, not TensorRT")

log = logging.getLogger(__name__)

PLATFORM = "tensorrt_plan"  # Triton's name for a TensorRT engine


class BatchRange(NamedTuple):
    """The batch dimension of one optimization profile (the same for every input)."""

    min: int
    opt: int
    max: int


class _Logger(trt.ILogger):  # type: ignore[misc,unused-ignore]  # Any where the stubs are absent
    """Forwards TensorRT's log to ``logging`` and keeps errors to explain a failed load or run."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: list[str] = []

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
            self.errors.append(msg)
            log.error("TensorRT: %s", msg)
        elif severity == trt.ILogger.Severity.WARNING:
            log.warning("TensorRT: %s", msg)
        else:
            log.debug("TensorRT: %s", msg)


class TensorRTEngine:
    """One deserialized engine; ``run`` may be called from several threads (runs are serialised)."""

    platform = PLATFORM

    def __init__(self, plan: bytes, *, device_index: int = 0, cuda: Cuda | None = None, cuda_graphs: bool = True,
                 origin: str = "the engine") -> None:
        self._cuda = cuda if cuda is not None else default_cuda()
        self._cuda.set_device(device_index)
        self._graphs = cuda_graphs
        self._logger = _Logger()
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            reason = "; ".join(self._logger.errors) or "no reason logged"
            raise EngineLoadError(
                f"TensorRT {trt.__version__} could not load {origin}: {reason}. An engine runs only on the GPU "
                "architecture and TensorRT version it was built with: rebuild it for this GPU"
            )
        self._engine = engine
        self._inputs, self._outputs = _io_specs(engine)
        self._profiles = _batch_ranges(engine, self._inputs)
        self._buckets: dict[int, Bucket] = {}
        self._scratch = self._scratch_size = 0
        self._stream = self._cuda.new_stream()
        try:
            self._scratch, self._scratch_size = self._shared_activation_memory()
        except Exception:
            self._cuda.destroy_stream(self._stream)
            raise
        self._sizes = batch_buckets(self.max_batch)
        self._capture_logged = False
        self._lock = threading.Lock()  # one stream, one activation block: one batch at a time
        log.info("TensorRT %s loaded %s: inputs %s, batch profiles %s", trt.__version__, origin,
                 [(s.name, s.dtype, list(s.shape)) for s in self._inputs], [tuple(p) for p in self._profiles])

    # --- what the engine is -------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def max_batch(self) -> int:
        """The largest batch any optimization profile takes (a fixed first dimension for static engines)."""
        return max(p.max for p in self._profiles)

    @property
    def profiles(self) -> tuple[BatchRange, ...]:
        return self._profiles

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes runs are padded to."""
        return self._sizes

    def describe_buckets(self) -> list[dict[str, Any]]:
        """Per made bucket: batch, profile, whether a CUDA graph runs it (and why not)."""
        return [self._buckets[b].describe() for b in sorted(self._buckets)]

    # --- running ------------------------------------------------------------------------------
    def prepare(self, batch_sizes: Sequence[int]) -> None:
        """Make one bucket per size (context, buffers, CUDA graph) now; ``run`` pads to these sizes from then on."""
        if not batch_sizes:
            raise EngineRunError("prepare() needs at least one batch size")
        sizes = tuple(sorted({self._fitting(int(b)) for b in batch_sizes}))  # all checked before anything is made
        if set(sizes) != set(batch_sizes):
            log.info("batch sizes %s run as %s: the engine's profiles take no batch of some of the asked sizes, "
                     "so those are padded to the next size a profile takes", sorted(set(batch_sizes)), list(sizes))
        with self._lock:
            for size in [b for b in self._buckets if b not in sizes]:
                self._buckets.pop(size).close()
            self._sizes = sizes
            for size in sizes:
                self._bucket(size)
        log.info("TensorRT buckets: %s", ", ".join(
            f"{d['batch']} (profile {d['profile']}{', CUDA graph' if d['cuda_graph'] else ''})"
            for d in self.describe_buckets()))

    def run(self, feeds: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """Run one batch (first dimension = rows) and return the named outputs."""
        return self.run_parts([feeds], outputs)

    def run_parts(self, parts: Sequence[Mapping[str, Array]], outputs: Sequence[str]) -> dict[str, Array]:
        """Run the requests ``parts`` as one batch, their rows in order: each is copied once, straight into
        the bucket's pinned buffers (no concatenated batch array in between). Outputs cover all rows."""
        names = [s.name for s in self._inputs]
        missing = sorted({n for part in parts for n in names if n not in part})
        if missing or not parts:
            raise EngineRunError(f"inputs {missing} are missing; the engine takes {names}")
        rows = sum(int(np.shape(part[names[0]])[0]) for part in parts)
        size = next((b for b in self._sizes if b >= rows), None)
        if size is None or rows < 1:
            raise EngineRunError(f"a batch of {rows} rows does not fit the engine's batch sizes {list(self._sizes)}")
        with self._lock:
            return self._bucket(size).run(parts, rows, outputs)

    def __call__(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Every output (the converter's runner signature)."""
        return self.run(feeds, [s.name for s in self._outputs])

    def close(self) -> None:
        with self._lock:
            for bucket in self._buckets.values():
                bucket.close()
            self._buckets.clear()  # the contexts go before the engine, as TensorRT requires
            if self._scratch:
                self._cuda.free(self._scratch)
                self._scratch = 0
            if self._stream:
                self._cuda.destroy_stream(self._stream)
                self._stream = 0

    # --- helpers ------------------------------------------------------------------------------
    def _bucket(self, size: int) -> Bucket:
        bucket = self._buckets.get(size)
        if bucket is None:
            profile = self._profile_for(size)
            context = self._context()
            bucket = Bucket(context, batch=size, profile=profile, inputs=self._inputs, outputs=self._outputs,
                            cuda=self._cuda, stream=self._stream, graphs=self._graphs)
            if self._graphs and not bucket.graph:
                level = logging.DEBUG if self._capture_logged else logging.WARNING
                log.log(level, "CUDA graph capture failed at batch %d (%s): that batch size runs with plain "
                        "enqueues (slower launches, same results)", size, bucket.capture_error)
                self._capture_logged = True
            self._buckets[size] = bucket
        return bucket

    def _fitting(self, size: int) -> int:
        """``size`` if a profile takes it, else the smallest larger size one takes (a batch pads up to it)."""
        if any(p.min <= size <= p.max for p in self._profiles):
            return size
        larger = [p.min for p in self._profiles if p.min > size]
        if size < 1 or not larger:
            self._profile_for(size)  # raises, naming the profiles
        return min(larger)

    def _profile_for(self, size: int) -> int:
        """The profile built for exactly this size, else the narrowest that covers it."""
        fits = [(p.opt != size, p.max - p.min, i) for i, p in enumerate(self._profiles) if p.min <= size <= p.max]
        if not fits:
            ranges = ", ".join(f"{p.min}..{p.max}" for p in self._profiles)
            raise EngineRunError(f"batch size {size} is outside every optimization profile of the engine ({ranges})")
        return min(fits)[2]

    def _context(self) -> trt.IExecutionContext:
        if not self._scratch_size:
            context = self._engine.create_execution_context()
        else:
            context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise EngineLoadError("TensorRT could not create an execution context (out of GPU memory?)")
        if self._scratch_size:
            context.set_device_memory(self._scratch, self._scratch_size)
        return context

    def _shared_activation_memory(self) -> tuple[int, int]:
        """One activation block for all contexts, where this TensorRT can hand it over (10.1+); else (0, 0)."""
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        size = getattr(self._engine, "device_memory_size_v2", None)
        if strategy is None or not isinstance(size, int):
            return 0, 0
        size = max(size, 1)
        return self._cuda.alloc(size), size


def _io_specs(engine: trt.ICudaEngine) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        spec = TensorSpec(name, _numpy_dtype(name, engine.get_tensor_dtype(name)), _dims(engine.get_tensor_shape(name)))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if not spec.shape or any(d < 0 for d in spec.shape[1:]):
                raise EngineLoadError(
                    f"input {name!r} has shape {list(spec.shape)}: trtop runs engines whose inputs have a batch "
                    "dimension first and fixed other dimensions (build with model.input_shapes set)"
                )
            inputs.append(spec)
        else:
            outputs.append(spec)
    if not inputs:
        raise EngineLoadError("the engine has no inputs")
    return tuple(inputs), tuple(outputs)


def _batch_ranges(engine: trt.ICudaEngine, inputs: Sequence[TensorSpec]) -> tuple[BatchRange, ...]:
    """Per optimization profile, the batch sizes every input accepts; a static engine has one fixed size."""
    fixed = {s.shape[0] for s in inputs if s.shape[0] > 0}
    if fixed:
        if len(fixed) > 1 or any(s.shape[0] < 0 for s in inputs):
            raise EngineLoadError(f"the engine's inputs disagree on the batch dimension: {[s.shape for s in inputs]}")
        (size,) = fixed
        return (BatchRange(size, size, size),)
    ranges: list[BatchRange] = []
    for profile in range(max(1, engine.num_optimization_profiles)):
        shapes = [[_dims(d)[0] for d in engine.get_tensor_profile_shape(s.name, profile)] for s in inputs]
        lows, opts, highs = [lo for lo, _, _ in shapes], [opt for _, opt, _ in shapes], [hi for _, _, hi in shapes]
        low, high = max(lows), min(highs)
        if low > high:
            raise EngineLoadError(f"optimization profile {profile}: the inputs share no batch size ({lows}..{highs})")
        ranges.append(BatchRange(low, min(max(max(opts), low), high), high))
    return tuple(ranges)


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    # Dims supports len() and indexing (its stubs do not declare iteration).
    return tuple(int(dims[i]) for i in range(len(dims)))


def _numpy_dtype(name: str, dtype: trt.DataType) -> str:
    nptype: Any = trt.nptype  # untyped in tensorrt-stubs
    try:
        return str(np.dtype(nptype(dtype)).name)
    except (TypeError, KeyError) as exc:
        raise EngineLoadError(f"I/O tensor {name!r} has TensorRT type {dtype}, which numpy cannot hold "
                              "(keep the model's inputs and outputs fp32/int; AutoCast keep_io_types)") from exc
