"""ONNX-level precision changes: ONNX Runtime fp16, ModelOpt AutoCast (fp16/bf16) and ModelOpt PTQ (int8/fp8).

Carries out the ``onnx_transform`` of a ``PrecisionPlan``. ModelOpt (``nvidia-modelopt``)
is imported only when a plan needs it; when it is missing the error says so and how to
get it, rather than building a different precision. Called by ``pipeline.py``.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trtop.convert.errors import BuildError, MissingDependencyError
from trtop.convert.onnxmodel import load_onnx, save_onnx, to_fp16
from trtop.convert.precision import PrecisionPlan

log = logging.getLogger(__name__)


def apply_precision(plan: PrecisionPlan, src: Path, dest: Path,
                    calibration: Mapping[str, np.ndarray] | None = None) -> Path:
    """The ONNX file to build from: ``src`` itself, or a converted copy written to ``dest``."""
    transform = plan.onnx_transform
    if transform == "none":
        return src
    if transform == "ort-fp16":
        save_onnx(to_fp16(load_onnx(src)), dest)
        return dest
    if transform in ("autocast-fp16", "autocast-bf16"):
        autocast = _modelopt("modelopt.onnx.autocast", plan)
        low = "fp16" if transform == "autocast-fp16" else "bf16"
        try:
            converted = autocast.convert_to_mixed_precision(onnx_path=str(src), low_precision_type=low,
                                                            keep_io_types=True)
        except Exception as e:
            raise BuildError(f"ModelOpt AutoCast to {low} failed: {e}") from e
        save_onnx(converted, dest)
        return dest
    if transform in ("qdq-int8", "qdq-fp8"):
        if not calibration:
            raise MissingDependencyError(
                f"precision {plan.precision} needs calibration data: set engine.calibrationUri (or sampleDataUri) "
                "to an .npz file with one array per model input"
            )
        quantization = _modelopt("modelopt.onnx.quantization", plan)
        mode = "int8" if transform == "qdq-int8" else "fp8"
        try:
            quantization.quantize(onnx_path=str(src), quantize_mode=mode, calibration_data=dict(calibration),
                                  output_path=str(dest))
        except Exception as e:
            raise BuildError(f"ModelOpt {mode} quantization failed: {e}") from e
        return dest
    raise AssertionError(f"unknown ONNX transform {transform!r}")


def _modelopt(module: str, plan: PrecisionPlan) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"precision {plan.precision} on this TensorRT needs NVIDIA ModelOpt ({module}), which is not installed "
            f"in the converter image ({e}). Install it (pip install 'nvidia-modelopt[onnx]'), or ask for fp32."
        ) from e
