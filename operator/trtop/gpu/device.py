"""The device as engine targets name it (compute capability + GFD-style product), and the match rule.

``detect_device`` is how the server learns where it runs (at start-up, to pick its engine
from the engine set); the converter turns its NVML reading into a ``Device`` with
``Device.of_gpu`` before building. Both ask ``Device.runs(target)``, which is
``trtop.api.targets.target_matches_device``: one rule for "may this engine run here".
A ``TRTOP_DEVICE`` value such as ``"8.9/NVIDIA-L4"`` or ``"cpu"`` overrides NVML (tests,
debugging a mismatch).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trtop.api.targets import CPU, Target, normalize_product, target_matches_device
from trtop.gpu.nvml import GpuInfo, read_gpu


@dataclass(frozen=True)
class Device:
    cc: str  # "9.0", or "cpu"
    product: str | None = None  # GFD form: "NVIDIA-H100-80GB-HBM3"
    source: str = "nvml"  # where the facts came from, for messages

    @property
    def is_cpu(self) -> bool:
        return self.cc == CPU

    @classmethod
    def of_gpu(cls, gpu: GpuInfo) -> Device:
        return cls(gpu.cc, gfd_product(gpu.name), source="nvml")

    def runs(self, target: Target) -> bool:
        """Whether an engine built for ``target`` may run on this device."""
        return target_matches_device(target, self.cc, self.product)

    def __str__(self) -> str:
        if self.is_cpu:
            return "a CPU-only machine (no NVIDIA GPU visible)"
        return f"GPU {self.product or '?'} (compute capability {self.cc})"


def gfd_product(nvml_name: str) -> str:
    """NVML's ``NVIDIA H100 80GB HBM3`` as GFD labels it: ``NVIDIA-H100-80GB-HBM3``."""
    return normalize_product("-".join(nvml_name.split()))


def parse_device(text: str) -> Device:
    """``"cpu"`` or ``"CC[/PRODUCT]"`` (the TRTOP_DEVICE override)."""
    target = Target.parse(text)
    return Device(target.cc, target.product, source="override")


def detect_device(override: str = "", index: int = 0,
                  read: Callable[[int], GpuInfo | None] = read_gpu) -> Device:
    """The override when given, else GPU ``index`` from NVML, else cpu."""
    if override:
        return parse_device(override)
    gpu = read(index)
    if gpu is None:
        return Device(CPU, source="no NVIDIA GPU visible to NVML")
    return Device.of_gpu(gpu)
