"""The runtime interface every backend implements, and the table that picks one by name.

A runtime loads one model/engine file and runs batches of numpy arrays; it knows nothing
of HTTP, queues or metrics. ``load_runtime`` is called by the server at start-up with a
backend name from ``BACKENDS`` (or any ``"module:attr"`` import path, for custom
backends and test doubles); the backend modules import their heavy libraries
(onnxruntime, tensorrt, tensorflow) only when chosen.
"""
from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from trtop.api.engine import TensorSpec
from trtop.serve.errors import StartupError
from trtop.serve.types import Feeds, Outputs

# backend name -> "module:factory"; a factory is called as factory(path, options).
BACKENDS: dict[str, str] = {
    "onnxruntime": "trtop.serve.backends.onnxruntime_impl:OnnxRuntime",
    "tensorrt": "trtop.serve.backends.tensorrt_impl:TensorRTRuntime",
    "tensorflow": "trtop.serve.backends.tensorflow_impl:TensorFlowRuntime",
}


def cpu_affinity() -> tuple[int, ...]:
    """The cores this process may run on (empty where the platform cannot tell)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return ()


def default_threads() -> int:
    """CPU cores this process may use: its affinity, capped by the cgroup's CPU limit (a pod's
    ``resources.limits.cpu``, rounded up), unlike os.cpu_count."""
    cores = max(1, len(cpu_affinity()) or os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max", v1: str = "/sys/fs/cgroup/cpu") -> float:
    """The cgroup's CPU limit in cores, as set (1.5 for ``limits.cpu: 1500m``), 0.0 when there is none or it
    cannot be read: cgroup v2's ``cpu.max``, else cgroup v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``
    (-1: none) in ``v1``."""
    try:
        try:
            with open(path, encoding="ascii") as f:
                quota, _, period = f.read(64).partition(" ")
        except FileNotFoundError:
            with open(os.path.join(v1, "cpu.cfs_quota_us"), encoding="ascii") as f:
                quota = f.read(64)
            with open(os.path.join(v1, "cpu.cfs_period_us"), encoding="ascii") as f:
                period = f.read(64)
        if quota.strip() in ("max", "-1"):
            return 0.0
        return max(0.0, int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):
        return 0.0


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max", v1: str = "/sys/fs/cgroup/cpu") -> int:
    """The cgroup's CPU limit in whole cores (rounded up), 0 when there is none or it cannot be read."""
    quota = cgroup_cpu_quota(path, v1)
    return max(1, math.ceil(quota)) if quota else 0


MAX_AUTO_INSTANCES = 4


def parallelism(instances: int, threads: int, *, backend: str, gpu: bool, cores: int) -> tuple[int, int]:
    """(batches at once, compute threads per batch) from the settings, where 0 means "choose".

    On a GPU: one batch at a time, with TensorRT (an execution context per bucket, owned by one batch at a
    time) and ONNX Runtime alike. ONNX Runtime on a GPU ran two once, so that one batch was merged and
    copied while the other computed (ResNet-50 on an H200: 0.73 against 0.57 x the in-process best at 128
    clients, with a server that merged in the engine's Python); with native front-ends grouping requests
    and the engine telling them when it has room, one instance formed batches about twice the size and
    served as much or more at every load from 8 clients, with its tail inside the target at 128
    (docs/server-measured.md, thirty-sixth and thirty-seventh sessions). On CPU, several batches side by
    side with the cores split between them: one multi-threaded run stalls at every parallel
    section when another thread (the event loop, a neighbour pod) takes a core, while
    independent runs just share the cores (measured on 2 cores, MobileNetV2, 32 clients).
    """
    if instances <= 0:
        if gpu or backend == "tensorrt":
            instances = 1
        else:
            instances = max(1, min(cores, MAX_AUTO_INSTANCES))
    if threads <= 0:
        # A GPU session's CPU threads only run small shape ops: waking a pool of them costs more than
        # it saves (ResNet-50 batch 1 on an H200: 1.26 ms in-process with 1 thread, ~2 ms with 16).
        threads = 1 if gpu else max(1, cores // instances)
    return instances, threads


# ``--slot-handoff``: in the engine process a thread waiting for the GIL asks for it after this long (Python's
# default 5 ms; ``sys.setswitchinterval``, set by the service when its runtime hands off)
HANDOFF_SWITCH_S = 0.0002


@dataclass(frozen=True)
class RuntimeOptions:
    # Compute threads for CPU backends (ONNX Runtime intra-op); 0 = every core we may use.
    threads: int = 0
    # Use a GPU when the backend and the machine have one (ONNX Runtime's CUDA provider).
    use_gpu: bool = True
    # GPU ordinal inside the container (a pod sees only the GPUs it was given).
    device_index: int = 0
    # TensorRT and ONNX Runtime CUDA: replay each batch size as a CUDA graph (falls back to plain
    # enqueues where capture fails).
    cuda_graphs: bool = True
    # ONNX Runtime CUDA: bind each batch size's inputs and outputs to fixed GPU buffers (IO binding).
    io_binding: bool = True
    # Batches that may run at once (the scheduler's instances): bound buffers are kept per run slot.
    slots: int = 1
    # ONNX Runtime CUDA: one more batch-1 session, bound and captured on the event loop's thread, where
    # a lone request runs without a hop to a slot's thread (one more copy of the weights on the GPU).
    loop_session: bool = True
    # ONNX Runtime CUDA: the event loop hands the GIL to a slot's thread at each batch (``--slot-handoff``,
    # ``onnxruntime_bind.BoundPool``; the server's default, off for a runtime built without the setting).
    handoff: bool = False

    @property
    def thread_count(self) -> int:
        return self.threads if self.threads > 0 else default_threads()


class FixedIO:
    """Shared by the backends: inputs and outputs fixed at load time, kept in ``_inputs``/``_outputs``.

    ``max_batch`` is the smallest fixed first dimension of the inputs (None when the batch
    is dynamic); a backend that knows better (TensorRT's profile) overrides it.
    """

    _inputs: tuple[TensorSpec, ...] = ()
    _outputs: tuple[TensorSpec, ...] = ()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def max_batch(self) -> int | None:
        fixed = {s.shape[0] for s in self._inputs if s.shape and s.shape[0] > 0}
        return min(fixed) if fixed else None

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        """Nothing to set up per batch size (warm-up runs still happen)."""


class Runtime(Protocol):
    """One loaded model. ``run`` may be called from several threads at once (``--instances``): a backend
    that cannot run batches concurrently serialises them itself."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input names, numpy dtypes and shapes (-1 = dynamic; dim 0 is the batch)."""

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output names, dtypes and shapes, as for inputs."""

    @property
    def max_batch(self) -> int | None:
        """The largest batch the model itself accepts (a TensorRT profile's max), None = no limit."""

    @property
    def platform(self) -> str:
        """Triton-style platform name reported in model metadata (``onnxruntime_onnx`` ...)."""

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        """Called once after loading, before warm-up, with the batch sizes (buckets) the server will
        run; ``run`` then only ever sees these batch dimensions. A backend builds per-size state here
        (TensorRT: an execution context / profile and a CUDA graph per size; ONNX Runtime CUDA: tuned
        algorithms per shape)."""

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        """Run one batch; returns the named outputs with the batch dimension first."""

    def close(self) -> None:
        """Free the model's memory (called once at shutdown)."""


RuntimeFactory = Callable[[Path, RuntimeOptions], Runtime]


def resolve_backend(name: str) -> RuntimeFactory:
    """The factory for a backend name in ``BACKENDS`` or a ``"module:attr"`` import path."""
    target = BACKENDS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise StartupError(
            f"backend {name!r} is not one of {sorted(BACKENDS)} nor a 'module:attribute' import path"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StartupError(
            f"backend {name!r} needs a library that is not installed here ({exc}); "
            "use the server image built for this backend, or choose another with --backend"
        ) from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise StartupError(f"backend {name!r}: module {module_name!r} has no attribute {attr!r}") from None
    return cast(RuntimeFactory, factory)


def load_runtime(backend: str, path: Path, options: RuntimeOptions) -> Runtime:
    """Load ``path`` with ``backend``; StartupError with the library's reason when it cannot."""
    factory = resolve_backend(backend)
    if not path.exists():
        raise StartupError(f"model file {path} does not exist")
    return factory(path, options)


def guess_backend(path: Path) -> str:
    """Backend for a raw model path: ``*.onnx`` -> onnxruntime, SavedModel folder -> tensorflow, ``*.plan``/``*.engine`` -> tensorrt."""
    if path.is_dir() and (path / "saved_model.pb").exists():
        return "tensorflow"
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in (".plan", ".engine", ".trt"):
        return "tensorrt"
    raise StartupError(
        f"cannot tell the backend of {path}: expected a .onnx file, a .plan/.engine file or a "
        "SavedModel folder (with saved_model.pb); pass --backend to say which"
    )
