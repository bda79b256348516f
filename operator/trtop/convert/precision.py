"""How a requested precision is realised by the installed stack (pure; no imports of TensorRT).

TensorRT 10 takes precision as builder flags (FP16, BF16, INT8, FP8) on a weakly typed
network; its INT8 and FP8 paths here use explicit quantization (ModelOpt Q/DQ nodes in
the ONNX, plus the flag), because calibrators are deprecated in 10 and gone in 11.
TensorRT 11 removed those flags: networks are strongly typed and the precision lives in
the ONNX graph (ModelOpt AutoCast for fp16/bf16, ModelOpt PTQ for int8/fp8).
ONNX Runtime on CPU: fp32, or fp16 through ONNX Runtime's float16 graph conversion.
Anything else is an ``UnsupportedPrecisionError``: never a silent fp32 engine.
Called by ``pipeline.py``; the plan is carried out by ``quantization.py`` and
``tensorrt_build.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trtop.api.engine import Backend, Precision
from trtop.convert.errors import UnsupportedPrecisionError

OnnxTransform = Literal["none", "ort-fp16", "autocast-fp16", "autocast-bf16", "qdq-int8", "qdq-fp8"]

# Verification tolerance per precision: |built - original| <= atol + rtol * |original|, elementwise.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (1e-2, 1e-2),
    "bf16": (5e-2, 5e-2),
    "int8": (1e-1, 1e-1),
    "fp8": (1e-1, 1e-1),
}


@dataclass(frozen=True)
class PrecisionPlan:
    precision: Precision
    onnx_transform: OnnxTransform = "none"
    builder_flags: tuple[str, ...] = ()  # names of tensorrt.BuilderFlag members
    strongly_typed: bool = False  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    needs_calibration: bool = False  # int8/fp8: Q/DQ scales come from calibration data

    @property
    def tolerance(self) -> tuple[float, float]:
        return TOLERANCES[self.precision]


def plan_precision(precision: Precision, backend: Backend, tensorrt_major: int | None = None) -> PrecisionPlan:
    """The plan for ``precision`` on ``backend`` (``tensorrt_major``: 10 or 11, for TensorRT)."""
    if precision not in TOLERANCES:
        raise UnsupportedPrecisionError(f"precision {precision!r} is not one of {sorted(TOLERANCES)}")
    if backend == "onnxruntime":
        if precision == "fp32":
            return PrecisionPlan("fp32")
        if precision == "fp16":
            return PrecisionPlan("fp16", onnx_transform="ort-fp16")
        raise UnsupportedPrecisionError(
            f"precision {precision!r} is not available on the ONNX Runtime (CPU) backend: use fp32 or fp16, "
            "or a GPU target for bf16/int8/fp8"
        )
    if backend != "tensorrt":
        raise UnsupportedPrecisionError(f"backend {backend!r} is not tensorrt or onnxruntime")
    if tensorrt_major is None or tensorrt_major < 10:
        raise UnsupportedPrecisionError(
            f"TensorRT {tensorrt_major} is not supported: the converter handles TensorRT 10 and 11"
        )
    if tensorrt_major == 10:
        return {
            "fp32": PrecisionPlan("fp32"),
            "fp16": PrecisionPlan("fp16", builder_flags=("FP16",)),
            "bf16": PrecisionPlan("bf16", builder_flags=("BF16",)),
            # Explicit quantization: Q/DQ carry the scales; FP16 lets the rest run in half precision.
            "int8": PrecisionPlan("int8", onnx_transform="qdq-int8", builder_flags=("INT8", "FP16"),
                                  needs_calibration=True),
            "fp8": PrecisionPlan("fp8", onnx_transform="qdq-fp8", builder_flags=("FP8", "FP16"),
                                 needs_calibration=True),
        }[precision]
    # TensorRT 11 and later: strongly typed networks, precision from the ONNX graph.
    return {
        "fp32": PrecisionPlan("fp32", strongly_typed=True),
        "fp16": PrecisionPlan("fp16", onnx_transform="autocast-fp16", strongly_typed=True),
        "bf16": PrecisionPlan("bf16", onnx_transform="autocast-bf16", strongly_typed=True),
        "int8": PrecisionPlan("int8", onnx_transform="qdq-int8", strongly_typed=True, needs_calibration=True),
        "fp8": PrecisionPlan("fp8", onnx_transform="qdq-fp8", strongly_typed=True, needs_calibration=True),
    }[precision]
