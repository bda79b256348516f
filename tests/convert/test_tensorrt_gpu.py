"""The TensorRT path for real: runs wherever TensorRT and an NVIDIA GPU are present, skipped elsewhere.

Nowhere in trtop's own CI can run it (no TensorRT builder wheel is reachable there; see
docs/converter.md); run it in the converter image on a GPU node:
``pytest -m gpu tests/convert/test_tensorrt_gpu.py``.
"""
from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.convert.conftest import make_request, write_onnx_gemm
from trtop.api.engine import BatchProfile
from trtop.convert import errors
from trtop.gpu.nvml import read_gpu

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tensorrt_version() -> str:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        pytest.skip(f"TensorRT is not installed here ({e})")
    if not hasattr(trt, "Builder"):
        pytest.skip("`import tensorrt` finds only type stubs (tensorrt-stubs), not TensorRT")
    if read_gpu() is None:
        pytest.skip("TensorRT is installed but NVML sees no NVIDIA GPU")
    return str(trt.__version__)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_verify_and_publish_on_this_gpu(tensorrt_version: str, tmp_path: Path, precision: str) -> None:
    from trtop.convert.pipeline import convert
    from trtop.store.filesystem import FilesystemStore

    gpu = read_gpu()
    assert gpu is not None
    if precision == "fp16" and int(tensorrt_version.split(".")[0]) >= 11:
        pytest.importorskip("modelopt.onnx.autocast", reason="fp16 on TensorRT 11 needs ModelOpt")
    model = write_onnx_gemm(tmp_path / "m.onnx")
    store = tmp_path / "engines"
    request = make_request(str(model), "onnx", store, target=gpu.cc, backend="tensorrt", precision=precision,
                           batch=BatchProfile(1, 4, 16))
    outcome = convert(request, FilesystemStore(str(store)), Path(tempfile.mkdtemp(dir=tmp_path)))
    record = outcome.record
    print(f"TensorRT {tensorrt_version} on {gpu}: parity {dict(record.parity)}, benchmark {dict(record.benchmark)}")
    assert record.artifact == "model.plan" and (FilesystemStore(str(store)).fetch(request.key, tmp_path / "f") / "model.plan").stat().st_size > 0
    assert record.versions["tensorrt"] == tensorrt_version and record.device["cc"] == gpu.cc
    assert record.parity["max_abs_error"] <= (1e-4 if precision == "fp32" else 1e-2)
    assert record.buckets == (1, 2, 4, 8, 16)


@pytest.mark.parametrize("per_bucket", [False, True])
def test_engine_runs_at_every_bucket_as_the_server_runs_it(tensorrt_version: str, tmp_path: Path,
                                                           per_bucket: bool) -> None:
    from trtop.api.engine import TensorSpec
    from trtop.convert import onnxmodel
    from trtop.convert.precision import plan_precision
    from trtop.convert.tensorrt_build import BuildOptions, build_engine, tensorrt_major
    from trtop.gpu.tensorrt import TensorRTEngine

    model = onnxmodel.prepare(onnxmodel.load_onnx(write_onnx_gemm(tmp_path / "m.onnx")), {})
    onnxmodel.save_onnx(model, tmp_path / "p.onnx")
    plan = plan_precision("fp32", "tensorrt", tensorrt_major(tensorrt_version))
    result = build_engine(tmp_path / "p.onnx", BuildOptions(
        inputs=(TensorSpec("x", "float32", (-1, 4)),), batch=BatchProfile(1, 8, 32), workspace_mib=256, plan=plan,
        profile_buckets=(1, 2, 4, 8, 16, 32) if per_bucket else ()))
    assert result.timing_cache
    runner = TensorRTEngine(result.engine)
    runner.prepare([1, 2, 4, 8, 16, 32])
    print(f"buckets: {runner.describe_buckets()}")
    assert len(runner.profiles) == (6 if per_bucket else 1)
    reference = onnxmodel.ort_session(tmp_path / "p.onnx")
    for batch in (1, 3, 8, 17, 32):  # 3 and 17 are padded to the buckets 4 and 32
        x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_allclose(runner({"x": x})["y"], onnxmodel.run_ort(reference, {"x": x})["y"], atol=1e-4)
    runner.close()


def test_a_wrong_target_is_refused(tensorrt_version: str, tmp_path: Path) -> None:
    from trtop.convert.pipeline import convert
    from trtop.store.filesystem import FilesystemStore

    gpu = read_gpu()
    assert gpu is not None
    other = "8.6" if gpu.cc != "8.6" else "9.0"
    request = make_request(str(write_onnx_gemm(tmp_path / "m.onnx")), "onnx", tmp_path / "e", target=other,
                           backend="tensorrt")
    with pytest.raises(errors.DeviceMismatchError):
        convert(request, FilesystemStore(str(tmp_path / "e")), Path(tempfile.mkdtemp(dir=tmp_path)))
