"""The pipeline's TensorRT path, wired to a fake ``tensorrt`` module and a fake NVML reading.

The fake engine is "run" by ONNX Runtime on the ONNX file the fake parser was given, so
verification and benchmarking go through the same code as on a GPU.
"""
from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest

from tests.convert.conftest import make_request
from tests.convert.fake_tensorrt import make_fake_tensorrt
from trtop.convert import errors, onnxmodel
from trtop.convert.nvml import GpuInfo
from trtop.convert.pipeline import convert
from trtop.store.filesystem import FilesystemStore

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "580.65.06")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", "580.65.06")


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(version: str = "10.13.0", **kwargs: Any) -> list[tuple[Any, ...]]:
        trt, calls = make_fake_tensorrt(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)

        class OrtStandIn:  # runs the ONNX the fake parser read, in place of the engine
            def __init__(self, plan: bytes) -> None:
                assert plan == b"PLAN-" + version.encode()
                path = [c[1] for c in calls if c[0] == "parse_from_file"][-1]
                self.session = onnxmodel.ort_session(Path(path), level="disable")

            def __call__(self, feeds: Any) -> Any:
                return onnxmodel.run_ort(self.session, feeds)

        monkeypatch.setattr("trtop.convert.tensorrt_runtime.TrtRunner", OrtStandIn)
        return calls
    return install


def build(request: Any, tmp_path: Path, gpu: GpuInfo | None = H100) -> Any:
    return convert(request, FilesystemStore(request.store_uri), Path(tempfile.mkdtemp(dir=tmp_path)),
                   read_gpu=lambda: gpu)


def test_engine_for_the_gpu_it_was_built_on(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path) -> None:
    calls = fake_trt("10.13.0")
    store = tmp_path / "engines"
    request = make_request(str(onnx_fixed_batch), "onnx", store, target="9.0/NVIDIA-H100-80GB-HBM3",
                           backend="tensorrt", precision="fp16")
    outcome = build(request, tmp_path)
    record = outcome.record
    assert record.artifact == "model.plan" and (store / request.key / "model.plan").read_bytes() == b"PLAN-10.13.0"
    assert record.versions["tensorrt"] == "10.13.0"
    assert record.device == {"name": "NVIDIA H100 80GB HBM3", "cc": "9.0", "driver": "580.65.06"}
    assert ("set_flag", "FP16") in calls
    cache = "_timing-caches/sm90-nvidia-h100-80gb-hbm3-trt10.13.0.cache"
    assert FilesystemStore(str(store)).get_blob(cache) == b"CACHE:"

    # The next build on this device type starts from the stored timing cache.
    calls.clear()
    build(make_request(str(onnx_fixed_batch), "onnx", store, target="9.0", backend="tensorrt"), tmp_path)
    assert ("create_timing_cache", b"CACHE:") in calls


def test_no_gpu_visible_is_an_infrastructure_error(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path) -> None:
    fake_trt()
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt")
    with pytest.raises(errors.NoDeviceError, match="no GPU is visible.*nvidia.com/gpu") as e:
        build(request, tmp_path, gpu=None)
    assert e.value.exit_code == errors.EXIT_INFRA_ERROR and e.value.stage == "build"


@pytest.mark.parametrize("target, gpu", [("9.0", A100), ("9.0/NVIDIA-H100-PCIe", H100)])
def test_wrong_gpu_is_refused_before_building(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path,
                                              target: str, gpu: GpuInfo) -> None:
    calls = fake_trt()
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target=target, backend="tensorrt")
    with pytest.raises(errors.DeviceMismatchError, match=f"runs on {gpu.name}.*wrong node") as e:
        build(request, tmp_path, gpu=gpu)
    assert e.value.exit_code == errors.EXIT_INFRA_ERROR
    assert ("build_serialized_network",) not in calls
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_trt11_fp16_without_modelopt_is_a_clear_error(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake_trt("11.4.0")
    monkeypatch.setitem(sys.modules, "modelopt", None)  # import fails, as where it is not installed
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt",
                           precision="fp16")
    with pytest.raises(errors.MissingDependencyError, match="needs NVIDIA ModelOpt.*nvidia-modelopt.*fp32") as e:
        build(request, tmp_path)
    assert e.value.stage == "precision" and e.value.exit_code == errors.EXIT_USER_ERROR


def test_trt11_fp16_autocasts_the_onnx_then_builds_strongly_typed(fake_trt: Any, onnx_fixed_batch: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_trt("11.4.0")
    autocast_calls: list[dict[str, Any]] = []

    def convert_to_mixed_precision(**kwargs: Any) -> Any:
        autocast_calls.append(kwargs)
        return onnxmodel.load_onnx(Path(kwargs["onnx_path"]))  # a stand-in: same graph

    autocast = types.ModuleType("modelopt.onnx.autocast")
    autocast.convert_to_mixed_precision = convert_to_mixed_precision  # type: ignore[attr-defined]
    for name in ("modelopt", "modelopt.onnx"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast", autocast)
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt",
                           precision="fp16")
    build(request, tmp_path)
    assert [(c["low_precision_type"], c["keep_io_types"]) for c in autocast_calls] == [("fp16", True)]
    assert [c for c in calls if c[0] == "parse_from_file"][0][1].endswith("model.precision.onnx")
    assert ("create_network", 2) in calls and not [c for c in calls if c[0] == "set_flag"]


def test_int8_needs_calibration_data(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path) -> None:
    fake_trt("10.13.0")
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt",
                           precision="int8")
    with pytest.raises(errors.BadRequestError, match="int8 needs calibration data.*calibrationUri"):
        build(request, tmp_path)
