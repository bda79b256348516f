"""Admission: a request is checked whole against the model before it may join a batch."""
from __future__ import annotations

import numpy as np
import pytest

from trtop.api.engine import TensorSpec
from trtop.serve.errors import BadRequest
from trtop.serve.model import ModelInfo, admit, model_config, model_metadata
from trtop.serve.protocol import InferRequest, RequestedOutput

INFO = ModelInfo(
    name="m", platform="onnxruntime_onnx", backend="onnxruntime",
    inputs=(TensorSpec("x", "float32", (-1, 4)), TensorSpec("k", "int64", (-1, -1))),
    outputs=(TensorSpec("y", "float32", (-1, 4)), TensorSpec("s", "float32", (-1, 1))), max_batch=8,
)


def request(outputs: tuple[RequestedOutput, ...] | None = None, binary: bool = False, **inputs: np.ndarray) -> InferRequest:
    return InferRequest(id=None, inputs=inputs, outputs=outputs, binary_output=binary, timeout_s=None)


def good(rows: int = 2, length: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.zeros((rows, 4), np.float32), "k": np.zeros((rows, length), np.int64)}


def test_a_good_request_is_admitted_with_its_rows_and_signature() -> None:
    a = admit(INFO, request(**good(rows=3)))
    assert a.rows == 3
    assert a.outputs == (RequestedOutput("y", False), RequestedOutput("s", False))
    assert a.signature == admit(INFO, request(**good(rows=1))).signature
    assert a.signature != admit(INFO, request(**good(length=5))).signature  # dynamic dims split batches


def test_binary_output_default_and_named_outputs() -> None:
    assert admit(INFO, request(binary=True, **good())).outputs[0].binary
    named = (RequestedOutput("s", True),)
    assert admit(INFO, request(outputs=named, **good())).outputs == named


@pytest.mark.parametrize("inputs,match", [
    ({"x": np.zeros((2, 4), np.float32)}, "missing input 'k'"),
    ({**good(), "z": np.zeros((2, 1), np.float32)}, "unknown input 'z'.*x \\(FP32 \\[-1, 4\\]\\)"),
    ({**good(), "x": np.zeros((2, 4), np.float64)}, "datatype FP64, the model expects FP32"),
    ({**good(), "x": np.zeros((2, 5), np.float32)}, "shape \\[2, 5\\], the model expects \\[-1, 4\\]"),
    ({**good(), "x": np.zeros((2, 4, 1), np.float32)}, "shape \\[2, 4, 1\\]"),
    ({**good(), "x": np.zeros((3, 4), np.float32)}, "disagree on the batch size"),
    (good(rows=0), "at least 1"),
    (good(rows=9), "more than the model's max batch of 8"),
])
def test_bad_requests_name_the_tensor_and_the_expectation(inputs: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        admit(INFO, request(**inputs))


def test_unknown_output() -> None:
    with pytest.raises(BadRequest, match="unknown output 'nope'"):
        admit(INFO, request(outputs=(RequestedOutput("nope", False),), **good()))


def test_metadata_and_config_documents() -> None:
    meta = model_metadata(INFO)
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    cfg = model_config(INFO)
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][1] == {"name": "k", "data_type": "TYPE_INT64", "dims": [-1]}
