"""Preparing ONNX models: dynamic batch, filled shapes, foreign ops, I/O specs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.convert.conftest import write_onnx_gemm
from trtop.api.engine import TensorSpec
from trtop.convert import errors
from trtop.convert.onnxmodel import check_ops, io_specs, load_onnx, ort_session, prepare, run_ort


def image_model(dims: list[int | str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("Cast", ["mean"], ["ids"], to=TensorProto.INT64)],
        "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [dims[0], 3]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [dims[0], 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fixed_batch_becomes_dynamic_and_runs_at_any_batch(tmp_path: Path) -> None:
    model = prepare(load_onnx(write_onnx_gemm(tmp_path / "m.onnx", batch=1)), {})
    assert io_specs(model) == ((TensorSpec("x", "float32", (-1, 4)),), (TensorSpec("y", "float32", (-1, 3)),))
    onnx.save(model, str(tmp_path / "p.onnx"))
    out = run_ort(ort_session(tmp_path / "p.onnx"), {"x": np.ones((5, 4), np.float32)})
    assert out["y"].shape == (5, 3)


def test_open_dims_are_filled_from_input_shapes() -> None:
    model = prepare(image_model(["N", "H", "W", 3]), {"image": (-1, 32, 24, 3)})
    inputs, outputs = io_specs(model)
    assert inputs == (TensorSpec("image", "float32", (-1, 32, 24, 3)),)
    assert outputs == (TensorSpec("mean", "float32", (-1, 3)), TensorSpec("ids", "int64", (-1, 3)))


@pytest.mark.parametrize("shapes, message", [
    ({}, r"open dimension 1 \(\[batch, H, W, 3\]\).*model.input_shapes"),
    ({"image": (-1, 32, 3)}, "has 3 dims, the model's input has 4"),
    ({"pixels": (-1, 1, 1, 3)}, r"names \['pixels'\], but the model's inputs are \['image'\]"),
])
def test_shape_problems_are_request_errors(shapes: dict[str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(errors.BadRequestError, match=message):
        prepare(image_model(["N", "H", "W", 3]), shapes)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    model = load_onnx(write_onnx_gemm(tmp_path / "m.onnx"))
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]))  # old exporters did
    assert [s.name for s in io_specs(prepare(model, {}))[0]] == ["x"]


def test_foreign_ops_are_reported_by_name() -> None:
    graph = helper.make_graph(
        [helper.make_node("Igamma", ["x", "x"], ["y"], name="PartitionedCall/Igamma"),
         helper.make_node("Relu", ["y"], ["z"]),
         helper.make_node("Custom", ["z"], ["w"], domain="my.ops", name="mine")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["N", 4])],
    )
    with pytest.raises(errors.UnsupportedOpError,
                       match=r"Igamma \(at PartitionedCall/Igamma\); my.ops.Custom \(at mine\)"):
        check_ops(helper.make_model(graph), "the model")


def test_ort_refuses_an_op_it_has_no_kernel_for(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Custom", ["x"], ["y"], domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "c.onnx"))
    with pytest.raises(errors.UserError, match="ONNX Runtime .* c.onnx"):
        ort_session(tmp_path / "c.onnx")


def test_bad_ort_level_is_a_request_error(tmp_path: Path) -> None:
    with pytest.raises(errors.BadRequestError, match="ort_optimization_level 'max'"):
        ort_session(write_onnx_gemm(tmp_path / "m.onnx"), level="max")
