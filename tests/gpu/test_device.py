"""The device as engine targets name it, and the one match rule the server and the converter share (NVML faked)."""
from __future__ import annotations

import sys
import types

import pytest

from trtop.api.targets import Target
from trtop.gpu.device import Device, detect_device, gfd_product, parse_device
from trtop.gpu.nvml import GpuInfo


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
    m.nvmlSystemGetDriverVersion = lambda: "580.65.06"  # type: ignore[attr-defined]
    return m


def test_nvml_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert detect_device() == Device("9.0", "NVIDIA-H100-80GB-HBM3", "nvml")


@pytest.mark.parametrize("nvml", [fake_nvml(fail=True), fake_nvml(count=0)])
def test_no_usable_gpu_means_cpu(monkeypatch: pytest.MonkeyPatch, nvml: types.ModuleType) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert detect_device().is_cpu


def test_one_rule_for_nvml_readings_and_gfd_labels() -> None:
    h100 = Device.of_gpu(GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "580"))
    assert h100 == Device("9.0", "NVIDIA-H100-80GB-HBM3", "nvml")
    assert h100.runs(Target.parse("9.0")) and h100.runs(Target.parse("9.0/NVIDIA-H100-80GB-HBM3"))
    assert h100.runs(Target.parse("9.0/NVIDIA-H100-80GB-HBM3-SHARED"))  # time-sliced: the same silicon
    assert not h100.runs(Target.parse("9.0/NVIDIA-H100-PCIe")) and not h100.runs(Target.parse("8.0"))
    assert not h100.runs(Target.parse("cpu"))
    a100_mig = parse_device("8.0/NVIDIA-A100-SXM4-80GB-MIG-1g.10gb")
    assert a100_mig.runs(Target.parse("8.0/NVIDIA-A100-SXM4-80GB"))
    assert not a100_mig.runs(Target.parse("8.0/NVIDIA-A100-SXM4-40GB"))


def test_the_reader_is_the_nvml_one() -> None:
    assert detect_device(read=lambda index: GpuInfo("NVIDIA L4", "8.9", "580")) == Device("8.9", "NVIDIA-L4", "nvml")
    assert detect_device(read=lambda index: None).is_cpu
