"""ONNX-level precision changes: ONNX Runtime fp16 for real, ModelOpt through a fake module."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.convert.conftest import write_onnx_gemm
from trtop.convert import errors
from trtop.convert.precision import plan_precision
from trtop.convert.quantization import apply_precision


def test_fp32_builds_from_the_model_itself(tmp_path: Path) -> None:
    src = write_onnx_gemm(tmp_path / "m.onnx")
    assert apply_precision(plan_precision("fp32", "onnxruntime"), src, tmp_path / "out.onnx") == src
    assert not (tmp_path / "out.onnx").exists()


def test_ort_fp16_keeps_fp32_inputs_and_outputs(tmp_path: Path) -> None:
    src = write_onnx_gemm(tmp_path / "m.onnx")
    out = apply_precision(plan_precision("fp16", "onnxruntime"), src, tmp_path / "out.onnx")
    model = onnx.load(str(out))
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.fixture
def fake_modelopt(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    autocast = types.ModuleType("modelopt.onnx.autocast")
    quantization = types.ModuleType("modelopt.onnx.quantization")

    def convert_to_mixed_precision(**kwargs: Any) -> onnx.ModelProto:
        calls.append(("autocast", kwargs))
        return onnx.load(kwargs["onnx_path"])

    def quantize(**kwargs: Any) -> None:
        calls.append(("quantize", kwargs))
        onnx.save(onnx.load(kwargs["onnx_path"]), kwargs["output_path"])

    autocast.convert_to_mixed_precision = convert_to_mixed_precision  # type: ignore[attr-defined]
    quantization.quantize = quantize  # type: ignore[attr-defined]
    for name, module in {"modelopt": types.ModuleType("modelopt"), "modelopt.onnx": types.ModuleType("modelopt.onnx"),
                         "modelopt.onnx.autocast": autocast, "modelopt.onnx.quantization": quantization}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_trt11_bf16_is_autocast(tmp_path: Path, fake_modelopt: list[tuple[str, dict[str, Any]]]) -> None:
    out = apply_precision(plan_precision("bf16", "tensorrt", 11), write_onnx_gemm(tmp_path / "m.onnx"),
                          tmp_path / "out.onnx")
    assert out.is_file()
    [(name, kwargs)] = fake_modelopt
    assert name == "autocast" and kwargs["low_precision_type"] == "bf16" and kwargs["keep_io_types"] is True


@pytest.mark.parametrize("major", [10, 11])
def test_int8_is_modelopt_ptq_with_the_calibration_data(tmp_path: Path, major: int,
                                                        fake_modelopt: list[tuple[str, dict[str, Any]]]) -> None:
    data = {"x": np.ones((16, 4), np.float32)}
    out = apply_precision(plan_precision("int8", "tensorrt", major), write_onnx_gemm(tmp_path / "m.onnx"),
                          tmp_path / "q.onnx", data)
    [(name, kwargs)] = fake_modelopt
    assert name == "quantize" and kwargs["quantize_mode"] == "int8" and kwargs["output_path"] == str(out)
    assert kwargs["calibration_data"]["x"].shape == (16, 4)


def test_int8_without_calibration_data(tmp_path: Path, fake_modelopt: list[tuple[str, dict[str, Any]]]) -> None:
    with pytest.raises(errors.MissingDependencyError, match="needs calibration data"):
        apply_precision(plan_precision("fp8", "tensorrt", 11), write_onnx_gemm(tmp_path / "m.onnx"), tmp_path / "q")


def test_missing_modelopt_is_never_a_silent_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(errors.MissingDependencyError, match="fp16 on this TensorRT needs NVIDIA ModelOpt"):
        apply_precision(plan_precision("fp16", "tensorrt", 11), write_onnx_gemm(tmp_path / "m.onnx"), tmp_path / "o")


def test_modelopt_failure_is_a_build_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           fake_modelopt: list[tuple[str, dict[str, Any]]]) -> None:
    def explode(**kwargs: Any) -> None:
        raise ValueError("unsupported graph")

    monkeypatch.setattr(sys.modules["modelopt.onnx.autocast"], "convert_to_mixed_precision", explode)
    with pytest.raises(errors.BuildError, match="AutoCast to fp16 failed: unsupported graph"):
        apply_precision(plan_precision("fp16", "tensorrt", 11), write_onnx_gemm(tmp_path / "m.onnx"), tmp_path / "o")
