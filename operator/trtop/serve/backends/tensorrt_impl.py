"""TensorRT backend of the server: ``trtop.gpu.tensorrt.TensorRTEngine`` with the server's errors.

Loaded by ``trtop.serve.runtime.load_runtime`` for ``backend == "tensorrt"``. The engine
class is the one the converter verified this engine with (parity, benchmark), so what
is served is what was checked; this module only reads the plan file and turns the
shared GPU errors into ``StartupError`` (load, ``prepare``) and ``InferenceFailed``
(``run``, ``run_parts``). TensorRT cannot run on the machines this project is developed on: this code
is checked with a fake ``tensorrt`` and a fake CUDA, and by ``tensorrt-stubs`` (mypy).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trtop.gpu.cuda import Cuda
from trtop.gpu.errors import GpuError
from trtop.gpu.tensorrt import TensorRTEngine
from trtop.serve.errors import InferenceFailed, StartupError
from trtop.serve.runtime import RuntimeOptions
from trtop.serve.types import Feeds, Outputs

_REBUILD = ("the operator rebuilds it when this node's target is in spec.engine.targets")


class TensorRTRuntime(TensorRTEngine):
    """The ``Runtime`` of a ``.plan`` file: buckets (contexts, pinned buffers, CUDA graphs) made in ``prepare``."""

    def __init__(self, path: Path, options: RuntimeOptions, cuda: Cuda | None = None) -> None:
        try:
            super().__init__(path.read_bytes(), device_index=options.device_index, cuda=cuda,
                             cuda_graphs=options.cuda_graphs, origin=str(path))
        except GpuError as exc:
            raise StartupError(f"{exc} ({_REBUILD})") from exc

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        try:
            super().prepare(batch_sizes)
        except GpuError as exc:
            raise StartupError(f"cannot set up the engine's batch sizes {list(batch_sizes)}: {exc}") from exc

    def run_parts(self, parts: Sequence[Feeds], outputs: Sequence[str]) -> Outputs:  # ``run`` comes here too
        try:
            return super().run_parts(parts, outputs)
        except GpuError as exc:
            raise InferenceFailed(f"TensorRT could not run this batch: {exc}") from exc
