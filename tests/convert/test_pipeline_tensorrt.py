"""The pipeline's TensorRT path, wired to a fake ``tensorrt`` module, fake CUDA and a fake NVML reading.

The fake engine is "run" by ONNX Runtime on the ONNX file the fake parser was given,
through the server's own TensorRT runtime (``trtop.gpu.tensorrt``) with its buckets,
pinned buffers and CUDA graphs, so verification and benchmarking go through the same
code as on a GPU, and as in the server.
"""
from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.convert.conftest import make_request
from tests.convert.fake_tensorrt import make_fake_tensorrt
from tests.gpu.fakes import FakeCuda, FakeEngine, add_fake_runtime
from trtop.api.engine import BatchProfile
from trtop.convert import errors, onnxmodel
from trtop.convert.pipeline import convert
from trtop.gpu import cuda as cuda_module
from trtop.gpu.nvml import GpuInfo
from trtop.store.filesystem import FilesystemStore

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "580.65.06")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", "580.65.06")
TRT_TYPES = {"float32": "FLOAT", "int64": "INT64", "int32": "INT32"}


class Built:
    """What the fake TensorRT built and ran: builder calls, the engine, the fake GPU."""

    def __init__(self, calls: list[tuple[Any, ...]], cuda: FakeCuda) -> None:
        self.calls, self.cuda = calls, cuda
        self.engines: list[FakeEngine] = []
        self.wrong_at: int | None = None  # a batch size at which the "engine" computes wrong numbers

    def load(self, plan: bytes, version: str) -> FakeEngine | None:
        if plan != b"PLAN-" + version.encode():
            return None
        path = Path([c[1] for c in self.calls if c[0] == "parse_from_file"][-1])
        inputs, outputs = onnxmodel.io_specs(onnxmodel.load_onnx(path))
        session = onnxmodel.ort_session(path, level="disable")
        profiles, shapes = [], []
        for call in self.calls:
            if call[0] == "set_shape":
                shapes.append(call)
            elif call[0] == "add_optimization_profile":
                profiles.append((shapes[0][2][0], shapes[0][3][0], shapes[0][4][0]))
                shapes = []

        def compute(feeds: Any) -> dict[str, np.ndarray]:
            out = onnxmodel.run_ort(session, feeds)
            rows = len(next(iter(feeds.values())))
            return {k: v + 1 for k, v in out.items()} if rows == self.wrong_at else out

        engine = FakeEngine(self.cuda, {s.name: (TRT_TYPES[s.dtype], s.shape) for s in inputs},
                            {s.name: (TRT_TYPES[s.dtype], s.shape) for s in outputs}, profiles, compute)
        self.engines.append(engine)
        return engine


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(version: str = "10.13.0", **kwargs: Any) -> Built:
        trt, calls = make_fake_tensorrt(version, **kwargs)
        built = Built(calls, FakeCuda())
        add_fake_runtime(trt, lambda plan: built.load(plan, version))
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        for name in ("trtop.gpu.tensorrt", "trtop.serve.backends.tensorrt_impl"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setattr(cuda_module, "_default", built.cuda)
        return built
    yield install
    for name in ("trtop.gpu.tensorrt", "trtop.serve.backends.tensorrt_impl"):
        sys.modules.pop(name, None)  # bound to the fake module


def build(request: Any, tmp_path: Path, gpu: GpuInfo | None = H100) -> Any:
    return convert(request, FilesystemStore(request.store_uri), Path(tempfile.mkdtemp(dir=tmp_path)),
                   read_gpu=lambda: gpu)


def test_engine_for_the_gpu_it_was_built_on(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path) -> None:
    calls = fake_trt("10.13.0").calls
    store = tmp_path / "engines"
    request = make_request(str(onnx_fixed_batch), "onnx", store, target="9.0/NVIDIA-H100-80GB-HBM3",
                           backend="tensorrt", precision="fp16")
    outcome = build(request, tmp_path)
    record = outcome.record
    assert record.artifact == "model.plan" and (FilesystemStore(str(store)).fetch(request.key, tmp_path / "f") / "model.plan").read_bytes() == b"PLAN-10.13.0"
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
    calls = fake_trt().calls
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
    calls = fake_trt("11.4.0").calls
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


def test_parity_runs_through_the_servers_runtime_at_every_bucket(fake_trt: Any, onnx_fixed_batch: Path,
                                                                 tmp_path: Path) -> None:
    built = fake_trt()
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt",
                           batch=BatchProfile(2, 4, 16))
    record = build(request, tmp_path).record
    assert record.buckets == (2, 4, 8, 16)  # batch_buckets(16) from the profile's min
    (engine,) = built.engines
    assert sorted(c.shapes["x"][0] for c in engine.contexts) == [2, 4, 8, 16]
    assert all(c.runs for c in engine.contexts) and built.cuda.calls.count("launch") > 4  # CUDA graphs replayed
    assert built.cuda.held() == {"device": 0, "pinned": 0, "graphs": 0, "execs": 0, "streams": 0}
    assert [c for c in built.calls if c[0] == "set_shape"] == [("set_shape", "x", (2, 4), (4, 4), (16, 4))]


def test_a_bucket_that_computes_wrong_fails_the_build(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path) -> None:
    built = fake_trt()
    built.wrong_at = 8  # verification runs at opt (4): only the bucket check sees batch 8
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt",
                           batch=BatchProfile(1, 4, 8))
    with pytest.raises(errors.ParityError, match="max abs error 1 "):
        build(request, tmp_path)


def test_one_profile_per_bucket_when_the_builder_option_asks(fake_trt: Any, onnx_fixed_batch: Path,
                                                             tmp_path: Path) -> None:
    built = fake_trt()
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt",
                           batch=BatchProfile(1, 4, 8), builder_options={"profile_per_bucket": "true"})
    record = build(request, tmp_path).record
    assert [c[2:] for c in built.calls if c[0] == "set_shape"] == [((b, 4), (b, 4), (b, 4)) for b in (1, 2, 4, 8)]
    assert record.buckets == (1, 2, 4, 8)
    assert sorted((c.shapes["x"][0], c.profile) for c in built.engines[0].contexts) == [(1, 0), (2, 1), (4, 2), (8, 3)]


def test_an_engine_that_does_not_load_is_a_build_error(fake_trt: Any, onnx_fixed_batch: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    built = fake_trt()
    monkeypatch.setattr(built, "load", lambda plan, version: None)
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt")
    with pytest.raises(errors.BuildError, match="does not run: TensorRT 10.13.0 could not load the engine it just "
                                                "built: .*expecting compute 8.9") as e:
        build(request, tmp_path)
    assert e.value.stage == "build"
