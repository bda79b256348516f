"""What GPU this process sees, read with NVML (``nvidia-ml-py``): name, compute capability, driver.

The one NVML reader of the project. ``read_gpu()`` returns None where there is no NVML
library, no driver or no GPU, so callers decide what a missing GPU means: the converter
refuses to build (a Job on the wrong node must not publish an engine for the wrong
architecture), the server serves on CPU (``device.detect_device``). NVML ignores
``CUDA_VISIBLE_DEVICES``; in a pod the device plugin exposes only the allocated GPUs.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class GpuInfo(NamedTuple):
    name: str  # "NVIDIA H100 80GB HBM3"
    cc: str  # "9.0"
    driver: str  # "580.65.06"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "cc": self.cc, "driver": self.driver}


def read_gpu(index: int = 0, nvml: Any = None) -> GpuInfo | None:
    """GPU ``index`` as NVML reports it, or None when NVML or the GPU is absent (the reason is logged)."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            log.info("nvidia-ml-py is not installed: no GPU can be read")
            return None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded: no GPU here
        log.info("NVML unavailable (%s): no GPU visible", exc)
        return None
    try:
        if index >= int(nvml.nvmlDeviceGetCount()):
            log.info("NVML sees no GPU %d", index)
            return None
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return GpuInfo(_text(nvml.nvmlDeviceGetName(handle)), f"{int(major)}.{int(minor)}",
                       _text(nvml.nvmlSystemGetDriverVersion()))
    except Exception as exc:
        log.warning("NVML could not read GPU %d: %s", index, exc)
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
