"""What GPU this process sees, read with NVML (``nvidia-ml-py``): name, compute capability, driver.

``read_gpu()`` returns None where there is no NVML library, no driver or no GPU, so
callers decide what a missing GPU means. The converter compares the reading with the
requested target before building (a Job on the wrong node must not publish an engine
for the wrong architecture); the server can use it to pick its engine. NVML ignores
``CUDA_VISIBLE_DEVICES``; in a pod the device plugin exposes only the allocated GPUs.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, NamedTuple

from trtop.api.targets import Target, normalize_product


class GpuInfo(NamedTuple):
    name: str  # "NVIDIA H100 80GB HBM3"
    cc: str  # "9.0"
    driver: str  # "580.65.06"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "cc": self.cc, "driver": self.driver}


def read_gpu(index: int = 0, nvml: Any = None) -> GpuInfo | None:
    """GPU ``index`` as NVML reports it, or None when NVML or the GPU is absent."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded: no GPU here
        return None
    try:
        if index >= int(nvml.nvmlDeviceGetCount()):
            return None
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return GpuInfo(_text(nvml.nvmlDeviceGetName(handle)), f"{int(major)}.{int(minor)}",
                       _text(nvml.nvmlSystemGetDriverVersion()))
    except Exception:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def product_slug(product: str) -> str:
    """GFD's ``NVIDIA-H100-80GB-HBM3`` and NVML's ``NVIDIA H100 80GB HBM3`` both -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", normalize_product(product).lower()).strip("-")


def gpu_matches_target(gpu: GpuInfo, target: Target) -> bool:
    if gpu.cc != target.cc:
        return False
    return target.product is None or product_slug(gpu.name) == product_slug(target.product)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
