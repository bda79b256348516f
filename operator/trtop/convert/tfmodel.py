"""TensorFlow side of the converter: load a SavedModel signature or a Keras model, run it, turn it into ONNX.

- SavedModel: the signature is chosen by name (``model.signature``, default
  ``serving_default``); its input and output names become the ONNX names.
- Keras (``.keras`` / ``.h5``): loaded with Keras 3, exported to a SavedModel
  (``serving_default``) in the work folder, then converted like any SavedModel; the
  *Keras model itself* stays the reference for verification.
- ONNX via tf2onnx 1.17 at opset 17, in process (no second TensorFlow start-up). The batch
  dimension comes out dynamic; ops tf2onnx cannot map are reported by name.
- TF-TRT (method ``tf-trt``) only where TensorFlow was built with TensorRT.

TensorFlow is imported lazily: the server image never loads this module. Called by
``pipeline.py``.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.convert.errors import BadRequestError, MissingDependencyError, ModelFormatError, UnsupportedOpError
from trtop.convert.onnxmodel import OPSET, check_ops

log = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass
class TfModel:
    """A loaded TF model: the SavedModel to convert and the original to compare against."""

    kind: str  # "savedmodel" | "keras"
    saved_model_dir: Path
    signature: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    reference: Callable[[Feeds], Outputs]
    _keep_alive: Any = None  # the loaded object; its signatures die with it

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)


def tensorflow_versions() -> dict[str, str]:
    with _quiet():
        import tensorflow as tf
        import tf2onnx
    versions = {"tensorflow": str(tf.__version__), "tf2onnx": str(tf2onnx.__version__)}
    try:
        import keras

        versions["keras"] = str(keras.__version__)
    except ImportError:
        pass
    return versions


def load_savedmodel(path: Path, signature: str) -> TfModel:
    with _quiet():
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as e:
            raise ModelFormatError(f"{path.name}: TensorFlow cannot load this SavedModel: {_first_line(e)}") from e
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signature not in signatures:
        raise BadRequestError(
            f"the SavedModel has no signature {signature!r}; it has {sorted(signatures) or 'none'}: "
            "set model.signature to one of them"
        )
    fn = signatures[signature]
    inputs = tuple(_tensor_spec(name, spec) for name, spec in sorted(fn.structured_input_signature[1].items()))
    outputs = tuple(_tensor_spec(name, spec) for name, spec in fn.structured_outputs.items())

    def reference(feeds: Feeds) -> Outputs:
        with _quiet():
            result = fn(**{s.name: tf.constant(feeds[s.name]) for s in inputs})
        return {name: np.asarray(value.numpy()) for name, value in result.items()}

    return TfModel("savedmodel", path, signature, inputs, outputs, reference, loaded)


def load_keras(path: Path, workdir: Path) -> TfModel:
    with _quiet():
        import keras

        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as e:
            raise ModelFormatError(f"{path.name}: Keras cannot load this model: {_first_line(e)}") from e
        if not getattr(model, "inputs", None):
            raise ModelFormatError(
                f"{path.name}: a subclassed Keras model without defined inputs cannot be exported; "
                "save it as a functional model or export a SavedModel with a signature"
            )
        export_dir = workdir / "keras-savedmodel"
        try:
            model.export(str(export_dir), format="tf_saved_model", verbose=False)
        except Exception as e:
            raise UnsupportedOpError(f"{path.name}: Keras could not export this model: {_first_line(e)}") from e
    exported = load_savedmodel(export_dir, "serving_default")
    structure = getattr(model, "_inputs_struct", None)

    def reference(feeds: Feeds) -> Outputs:
        with _quiet():
            if structure is not None:
                args = keras.tree.map_structure(lambda t: feeds[_input_name(t)], structure)
            elif len(model.inputs) == 1:  # Sequential models
                args = feeds[_input_name(model.inputs[0])]
            else:
                args = [feeds[_input_name(t)] for t in model.inputs]
            result = model(args, training=False)
        return _name_outputs(result, exported.output_names)

    return TfModel("keras", export_dir, "serving_default", exported.inputs, exported.outputs,
                   reference, (model, exported._keep_alive))


def to_onnx(model: TfModel) -> Any:
    """The ONNX ModelProto of the model's SavedModel signature (tf2onnx 1.17, opset 17)."""
    with _quiet(), _collect_tf2onnx_errors() as errors:
        import tensorflow as tf
        import tf2onnx.convert as tf2onnx_convert
        from tf2onnx import tf_loader

        try:
            graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
                str(model.saved_model_dir), None, None, None, [model.signature], None, False,
                return_initialized_tables=True, return_tensors_to_rename=True,
            )
            with tf.device("/cpu:0"):
                # _convert_common is what `python -m tf2onnx.convert` runs; the public from_graph_def
                # drops the SavedModel's lookup tables and forces continue_on_error=True.
                proto, _ = tf2onnx_convert._convert_common(
                    graph_def, name=str(model.saved_model_dir), continue_on_error=False, opset=OPSET,
                    input_names=inputs, output_names=outputs, tensors_to_rename=renames,
                    initialized_tables=tables,
                )
        except Exception as e:
            detail = "; ".join(errors) or _first_line(e)
            raise UnsupportedOpError(f"tf2onnx could not convert the {model.kind} model: {detail}") from e
    check_ops(proto, f"the {model.kind} model (converted by tf2onnx)")
    return proto


def tensorrt_in_tensorflow() -> bool:
    with _quiet():
        import tensorflow as tf
    return bool(tf.sysconfig.get_build_info().get("is_tensorrt_build", False))


def require_tftrt() -> None:
    """MissingDependencyError unless this TensorFlow can run TF-TRT (method ``tf-trt``)."""
    if not tensorrt_in_tensorflow():
        raise MissingDependencyError(
            f"method 'tf-trt' needs TensorFlow built with TensorRT, but TensorFlow {tensorflow_versions()['tensorflow']}"
            " was not (TF-TRT left the pip builds in 2.18). Use method 'onnx': the ONNX -> TensorRT path."
        )


def convert_tftrt(saved_model_dir: Path, signature: str, out_dir: Path, precision: str, workspace_mib: int) -> None:
    """TF-TRT conversion (method ``tf-trt``): a SavedModel with TensorRT segments, for old TF images."""
    require_tftrt()
    from tensorflow.python.compiler.tensorrt import trt_convert

    modes = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
    if precision not in modes:
        raise BadRequestError(f"method 'tf-trt' supports precisions {sorted(modes)}, not {precision!r}")
    converter = trt_convert.TrtGraphConverterV2(
        input_saved_model_dir=str(saved_model_dir), input_saved_model_signature_key=signature,
        precision_mode=modes[precision], max_workspace_size_bytes=workspace_mib << 20,
    )
    converter.convert()
    converter.save(str(out_dir))


# --- helpers -----------------------------------------------------------------------------------
def _tensor_spec(name: str, spec: Any) -> TensorSpec:
    shape = tuple(-1 if d is None else int(d) for d in spec.shape)
    return TensorSpec(str(name), str(spec.dtype.name), shape)


def _input_name(tensor: Any) -> str:
    # Keras input tensors are named after their Input layer ("pixels"), sometimes with a ":0".
    return str(getattr(tensor, "name", "")).split(":")[0]


def _name_outputs(result: Any, names: tuple[str, ...]) -> Outputs:
    """Keras returns a tensor, a list or a dict; name the values like the exported signature does."""
    if isinstance(result, Mapping):
        return {str(k): np.asarray(v) for k, v in result.items()}
    values = list(result) if isinstance(result, (list, tuple)) else [result]
    ordered = sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    if len(values) != len(ordered):
        raise ModelFormatError(f"the Keras model returned {len(values)} outputs, its signature names {ordered}")
    return {name: np.asarray(v) for name, v in zip(ordered, values)}


@contextmanager
def _quiet() -> Iterator[None]:
    """TensorFlow, Keras and tf2onnx are chatty: keep their C++ logs and Python warnings out of the build log."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN reorders sums: keep fp32 results stable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("tensorflow", "tf2onnx", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)
        yield


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_tf2onnx_errors() -> Iterator[list[str]]:
    handler = _ErrorCollector()
    logger = logging.getLogger("tf2onnx")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
