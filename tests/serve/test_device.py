"""Reading the local GPU's compute capability and product (NVML faked: no GPU here)."""
from __future__ import annotations

import sys
import types

import pytest

from trtop.serve.device import Device, detect_device, gfd_product, parse_device


def test_nvml_names_become_gfd_products() -> None:
    assert gfd_product("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert gfd_product("Tesla T4") == "Tesla-T4"


def test_override() -> None:
    assert parse_device("cpu") == Device("cpu", None, "override")
    assert detect_device("8.9/NVIDIA-L4-SHARED") == Device("8.9", "NVIDIA-L4", "override")


def fake_nvml(count: int = 1, fail: bool = False) -> types.ModuleType:
    m = types.ModuleType("pynvml")

    def init() -> None:
        if fail:
            raise RuntimeError("NVML Shared Library Not Found")

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    m.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)  # type: ignore[attr-defined]
    return m


def test_nvml_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert detect_device() == Device("9.0", "NVIDIA-H100-80GB-HBM3", "nvml")


@pytest.mark.parametrize("nvml", [fake_nvml(fail=True), fake_nvml(count=0)])
def test_no_usable_gpu_means_cpu(monkeypatch: pytest.MonkeyPatch, nvml: types.ModuleType) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert detect_device().is_cpu
