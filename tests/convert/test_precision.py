"""Precision plans: what each backend and TensorRT major version does for each precision."""
from __future__ import annotations

import pytest

from trtop.convert.errors import UnsupportedPrecisionError
from trtop.convert.precision import TOLERANCES, plan_precision


@pytest.mark.parametrize("precision, transform, flags", [
    ("fp32", "none", ()), ("fp16", "none", ("FP16",)), ("bf16", "none", ("BF16",)),
    ("int8", "qdq-int8", ("INT8", "FP16")), ("fp8", "qdq-fp8", ("FP8", "FP16")),
])
def test_tensorrt_10_uses_builder_flags(precision: str, transform: str, flags: tuple[str, ...]) -> None:
    plan = plan_precision(precision, "tensorrt", 10)  # type: ignore[arg-type]
    assert (plan.onnx_transform, plan.builder_flags, plan.strongly_typed) == (transform, flags, False)
    assert plan.needs_calibration == (precision in ("int8", "fp8"))


@pytest.mark.parametrize("precision, transform", [
    ("fp32", "none"), ("fp16", "autocast-fp16"), ("bf16", "autocast-bf16"), ("int8", "qdq-int8"), ("fp8", "qdq-fp8"),
])
def test_tensorrt_11_puts_precision_in_the_onnx(precision: str, transform: str) -> None:
    plan = plan_precision(precision, "tensorrt", 11)  # type: ignore[arg-type]
    assert (plan.onnx_transform, plan.builder_flags, plan.strongly_typed) == (transform, (), True)


def test_onnxruntime_does_fp32_and_fp16_only() -> None:
    assert plan_precision("fp32", "onnxruntime").onnx_transform == "none"
    assert plan_precision("fp16", "onnxruntime").onnx_transform == "ort-fp16"
    for precision in ("bf16", "int8", "fp8"):
        with pytest.raises(UnsupportedPrecisionError, match="use fp32 or fp16"):
            plan_precision(precision, "onnxruntime")  # type: ignore[arg-type]


def test_old_or_unknown_tensorrt_is_refused() -> None:
    with pytest.raises(UnsupportedPrecisionError, match="TensorRT 8 is not supported"):
        plan_precision("fp16", "tensorrt", 8)
    with pytest.raises(UnsupportedPrecisionError, match="'fp4' is not one of"):
        plan_precision("fp4", "tensorrt", 10)  # type: ignore[arg-type]


def test_tolerances_loosen_as_precision_drops() -> None:
    order = ["fp32", "fp16", "bf16", "int8"]
    assert [TOLERANCES[p] for p in order] == sorted(TOLERANCES[p] for p in order)
    assert plan_precision("fp16", "onnxruntime").tolerance == TOLERANCES["fp16"]
