"""The device this server runs on: compute capability and GFD-style product, read from NVML.

Called once at start-up by ``source`` to pick the engine. Without NVML (no driver, no
GPU in the container, ``nvidia-ml-py`` not installed) the device is ``cpu``. A
``TRTOP_DEVICE`` value such as ``"8.9/NVIDIA-L4"`` or ``"cpu"`` overrides NVML (tests,
debugging a mismatch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trtop.api.targets import CPU, Target, normalize_product

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    cc: str  # "9.0", or "cpu"
    product: str | None = None  # GFD form: "NVIDIA-H100-80GB-HBM3"
    source: str = "nvml"  # where the facts came from, for messages

    @property
    def is_cpu(self) -> bool:
        return self.cc == CPU

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


def detect_device(override: str = "", index: int = 0) -> Device:
    """The override when given, else GPU ``index`` from NVML, else cpu."""
    if override:
        return parse_device(override)
    try:
        import pynvml
    except ImportError:
        return Device(CPU, source="no nvidia-ml-py")
    nvml: Any = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...: no usable GPU here
        log.info("NVML unavailable (%s): serving on CPU", exc)
        return Device(CPU, source="no NVML")
    try:
        if nvml.nvmlDeviceGetCount() <= index:
            return Device(CPU, source="NVML sees no GPU")
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        return Device(f"{int(major)}.{int(minor)}", gfd_product(name), source="nvml")
    finally:
        nvml.nvmlShutdown()
