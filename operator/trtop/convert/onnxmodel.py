"""ONNX model handling: load, make the batch dimension dynamic, fill open shapes, check ops, run with ONNX Runtime.

Every backend starts from the ONNX model this module prepares: TensorRT parses it,
the ``onnxruntime`` backend optimizes and ships it. Called by ``pipeline.py``,
``tfmodel.py`` (to check what tf2onnx produced) and ``parity.py`` (to run models).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtop.api.engine import TensorSpec
from trtop.convert.errors import BadRequestError, BuildError, ModelFormatError, UnsupportedOpError

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
OPSET = 17  # what tf2onnx targets; TensorRT 10/11 and ONNX Runtime all parse it
_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}  # com.microsoft: ORT contrib ops
ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
_MAX_PROTO = 1_800_000_000  # protobuf's 2 GiB limit, with headroom: larger models use external data


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # DecodeError, ValidationError, OSError from a torn file
        raise ModelFormatError(f"{path.name} is not a valid ONNX model: {_first_line(e)}") from e
    return model


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    external = model.ByteSize() > _MAX_PROTO
    onnx.save_model(model, str(path), save_as_external_data=external, location=f"{path.name}.data")


def prepare(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Dynamic first (batch) dimension on every input and output; open dims filled from ``input_shapes``.

    ``input_shapes`` holds full shapes (the first entry, the batch, is ignored); names not
    in the model and open dims left unfilled are request errors that name the inputs.
    """
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise BadRequestError(f"model.input_shapes names {unknown}, but the model's inputs are {names}")
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise ModelFormatError(f"input {value.name!r} is a scalar or has no shape: it needs a batch dimension")
        wanted = input_shapes.get(value.name)
        if wanted is not None and len(wanted) != len(dims):
            raise BadRequestError(
                f"model.input_shapes[{value.name!r}] has {len(wanted)} dims, the model's input has {len(dims)} "
                f"({_shape_text(dims)}); give the full shape with -1 for the batch"
            )
        _make_batch_dynamic(dims[0])
        for i, dim in enumerate(dims[1:], start=1):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if wanted is None or wanted[i] <= 0:
                raise BadRequestError(
                    f"input {value.name!r} has open dimension {i} ({_shape_text(dims)}): set model.input_shapes "
                    f"for it, e.g. {{{value.name!r}: [-1, ...]}}"
                )
            dim.Clear()
            dim.dim_value = int(wanted[i])
    for value in graph.output:  # outputs follow the inputs' batch (the record's contract: dim 0 is the batch)
        dims = value.type.tensor_type.shape.dim
        if dims:
            _make_batch_dynamic(dims[0])
    return model


def io_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {i.name for i in model.graph.initializer}
    return (
        tuple(_spec(v) for v in model.graph.input if v.name not in initializers),
        tuple(_spec(v) for v in model.graph.output),
    )


def check_ops(model: onnx.ModelProto, origin: str) -> None:
    """Every node is a standard ONNX op; otherwise the converter left a foreign op in the graph."""
    opsets = {o.domain: o.version for o in model.opset_import}
    bad: dict[str, list[str]] = {}
    for node in model.graph.node:
        domain = node.domain or ""
        known = domain in _STANDARD_DOMAINS and (
            domain == "com.microsoft" or onnx.defs.has(node.op_type, domain)
        )
        if not known:
            bad.setdefault(f"{domain + '.' if domain else ''}{node.op_type}", []).append(node.name)
    if bad:
        listed = "; ".join(f"{op} (at {', '.join(nodes[:3])})" for op, nodes in sorted(bad.items()))
        raise UnsupportedOpError(
            f"{origin} uses operations with no ONNX equivalent: {listed}. Replace them in the model, "
            f"or export it to ONNX yourself and use model.format 'onnx' (opsets: {opsets})."
        )


# --- ONNX Runtime ------------------------------------------------------------------------------
def ort_session(path: Path, *, level: str = "extended", optimized_path: Path | None = None,
                threads: int = 0) -> Any:
    """An ONNX Runtime CPU session; with ``optimized_path``, the optimized graph is written there."""
    import onnxruntime as ort

    if level not in ORT_LEVELS:
        raise BadRequestError(f"builder option ort_optimization_level {level!r} is not one of {sorted(ORT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[level])
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        text = _first_line(e)
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
            raise UnsupportedOpError(f"ONNX Runtime {ort.__version__} cannot run {path.name}: {text}") from e
        raise BuildError(f"ONNX Runtime {ort.__version__} refused {path.name}: {text}") from e


def run_ort(session: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, dict(feeds))
    return {n: np.asarray(v) for n, v in zip(names, values)}


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, fp32 inputs/outputs (the interface stays the same for clients)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted: onnx.ModelProto = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return converted


# --- helpers -----------------------------------------------------------------------------------
def _make_batch_dynamic(dim: Any) -> None:
    dim.Clear()
    dim.dim_param = BATCH_DIM


def _spec(value: Any) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def _shape_text(dims: Any) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
