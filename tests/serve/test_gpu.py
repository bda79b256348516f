"""On a real NVIDIA GPU: the server reads its device and picks its engine like cc_model_filenames.
Skipped (saying why) where there is no GPU.

The CUDA buffers, pinned copies and graphs are tested on a GPU in tests/gpu/test_cuda.py;
TensorRT itself in tests/convert/test_tensorrt_gpu.py, wherever `import tensorrt` gives
the real library.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from trtop.serve.device import detect_device, gfd_product
from trtop.serve.selection import EngineChoice, choose_engine, parse_engine_set

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvml():
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - any NVML failure means: no usable GPU here
        pytest.skip(f"no NVIDIA GPU/driver visible to NVML: {e}")
    yield pynvml
    pynvml.nvmlShutdown()


def test_device_is_what_nvml_reports(nvml):
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    name = nvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else name
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    device = detect_device()
    print(f"NVML: {name!r} compute capability {major}.{minor} -> {device!r}")
    assert device.cc == f"{major}.{minor}" and device.product == gfd_product(name)
    assert device.source == "nvml"


def test_server_picks_the_engine_built_for_this_gpu(nvml):
    device = detect_device()
    others = [{"key": "e-000000000000b001", "target": {"cc": "7.5", "product": "Tesla-T4"}, "backend": "tensorrt",
               "artifact": "model.plan"},
              {"key": "e-00000000000000c0", "target": {"cc": "cpu", "product": None}, "backend": "onnxruntime",
               "artifact": "model.onnx"}]
    mine = {"key": "e-000000000000a1ee", "target": {"cc": device.cc, "product": device.product}, "backend": "tensorrt",
            "artifact": "model.plan"}
    for i, entry in enumerate([*others, mine]):  # every entry pins its artifact (the server refuses one that does not)
        entry["sha256"] = f"{i:064x}"
    entries = [e for e in parse_engine_set(json.dumps([*others[:1], mine, others[1]]))
               if isinstance(e, EngineChoice)]
    assert choose_engine(entries, device).key == "e-000000000000a1ee"
    # Without an engine for this GPU the CPU engine is the fallback, never another GPU's plan.
    assert choose_engine([e for e in entries if e.key != "e-000000000000a1ee"], device).key == "e-00000000000000c0"


def test_onnxruntime_cuda_gets_one_fixed_shape_session_per_bucket(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA provider (install onnxruntime-gpu)")
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
    from trtop.serve.runtime import RuntimeOptions

    from .conftest import make_affine_onnx

    rt = OnnxRuntime(make_affine_onnx(tmp_path / "a.onnx"), RuntimeOptions(threads=1, use_gpu=True))
    rt.prepare((1, 2, 4))
    assert sorted(rt._by_batch) == [1, 2, 4]
    for rows in (1, 2, 4):
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        np.testing.assert_allclose(rt.run({"x": x}, ["y"])["y"], 2 * x + 1)
