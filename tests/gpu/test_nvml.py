"""Reading the GPU with NVML: with a fake NVML, and once for real wherever a GPU is visible."""
from __future__ import annotations

import types
from typing import Any

import pytest

from trtop.gpu.nvml import GpuInfo, read_gpu


def fake_nvml(*, count: int = 1, init_error: bool = False, name: Any = "NVIDIA H100 80GB HBM3") -> Any:
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_error:
            raise RuntimeError("NVML Shared Library Not Found")

    return types.SimpleNamespace(
        calls=calls, nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: count, nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetName=lambda h: name, nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
        nvmlSystemGetDriverVersion=lambda: b"580.65.06",
    )


def test_reads_name_compute_capability_and_driver() -> None:
    nvml = fake_nvml(name=b"NVIDIA H100 80GB HBM3")  # older bindings return bytes
    assert read_gpu(nvml=nvml) == GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "580.65.06")
    assert nvml.calls == ["init", "shutdown"]


def test_none_without_driver_or_device() -> None:
    assert read_gpu(nvml=fake_nvml(init_error=True)) is None
    nvml = fake_nvml(count=0)
    assert read_gpu(nvml=nvml) is None and nvml.calls == ["init", "shutdown"]


@pytest.mark.gpu
def test_real_gpu() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as e:
        pytest.skip(f"no NVIDIA driver here: NVML says {e}")
    gpu = read_gpu()
    if gpu is None:
        pytest.skip("NVML works but sees no GPU")
    print(f"NVML read: {gpu}")
    assert gpu.name.startswith("NVIDIA")
    major, minor = gpu.cc.split(".")
    assert int(major) >= 3 and minor.isdigit()
    assert gpu.driver[0].isdigit()
