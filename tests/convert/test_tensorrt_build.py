"""The TensorRT boundary against a fake ``tensorrt`` module: the calls a build makes on TensorRT 10 and 11."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.convert.conftest import write_onnx_gemm
from tests.convert.fake_tensorrt import make_fake_tensorrt
from trtop.api.engine import BatchProfile, TensorSpec
from trtop.convert import errors
from trtop.convert.precision import plan_precision
from trtop.convert.tensorrt_build import BuildOptions, build_engine, require_tensorrt, tensorrt_major

INPUTS = (TensorSpec("x", "float32", (-1, 4)),)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return write_onnx_gemm(tmp_path / "m.onnx", batch="batch")


def install(monkeypatch: pytest.MonkeyPatch, version: str, **kwargs: Any) -> list[tuple[Any, ...]]:
    trt, calls = make_fake_tensorrt(version, **kwargs)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    return calls


def options(precision: str, major: int, **changes: Any) -> BuildOptions:
    fields: dict[str, Any] = dict(inputs=INPUTS, batch=BatchProfile(2, 8, 64), workspace_mib=512,
                                  plan=plan_precision(precision, "tensorrt", major))  # type: ignore[arg-type]
    fields.update(changes)
    return BuildOptions(**fields)


def names(calls: list[tuple[Any, ...]], name: str) -> list[tuple[Any, ...]]:
    return [c for c in calls if c[0] == name]


def test_trt10_fp16_uses_builder_flags_on_a_weakly_typed_network(monkeypatch: pytest.MonkeyPatch,
                                                                  onnx_file: Path) -> None:
    calls = install(monkeypatch, "10.13.0")
    result = build_engine(onnx_file, options("fp16", 10))
    assert result.engine == b"PLAN-10.13.0"
    assert names(calls, "create_network") == [("create_network", 0)]
    assert names(calls, "set_flag") == [("set_flag", "FP16")]
    assert names(calls, "set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 512 << 20)]
    assert names(calls, "set_shape") == [("set_shape", "x", (2, 4), (8, 4), (64, 4))]
    assert names(calls, "add_optimization_profile") == [("add_optimization_profile",)]
    assert names(calls, "config.hardware_compatibility_level") == [("config.hardware_compatibility_level", "NONE")]


def test_one_fixed_shape_profile_per_bucket(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    calls = install(monkeypatch, "10.13.0")
    build_engine(onnx_file, options("fp32", 10, profile_buckets=(2, 4, 8)))
    assert names(calls, "set_shape") == [("set_shape", "x", (b, 4), (b, 4), (b, 4)) for b in (2, 4, 8)]
    assert len(names(calls, "add_optimization_profile")) == 3


def test_trt10_int8_is_explicit_quantization_with_fp16_fallback(monkeypatch: pytest.MonkeyPatch,
                                                               onnx_file: Path) -> None:
    calls = install(monkeypatch, "10.13.0")
    build_engine(onnx_file, options("int8", 10))
    assert names(calls, "set_flag") == [("set_flag", "INT8"), ("set_flag", "FP16")]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "fp8"])
def test_trt11_is_strongly_typed_and_sets_no_precision_flags(monkeypatch: pytest.MonkeyPatch, onnx_file: Path,
                                                             precision: str) -> None:
    calls = install(monkeypatch, "11.4.0")
    build_engine(onnx_file, options(precision, 11))
    assert names(calls, "create_network") == [("create_network", 1 << 1)]  # 1 << STRONGLY_TYPED
    assert names(calls, "set_flag") == []


def test_hardware_compatibility_and_builder_settings(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    calls = install(monkeypatch, "10.13.0")
    build_engine(onnx_file, options("fp32", 10, hardware_compatibility="ampere-plus", optimization_level=5,
                                    version_compatible=True))
    assert ("config.hardware_compatibility_level", "AMPERE_PLUS") in calls
    assert ("config.builder_optimization_level", 5) in calls
    assert names(calls, "set_flag") == [("set_flag", "VERSION_COMPATIBLE")]


def test_same_compute_capability_needs_a_tensorrt_that_has_it(monkeypatch: pytest.MonkeyPatch,
                                                            onnx_file: Path) -> None:
    install(monkeypatch, "10.8.0", levels=("NONE", "AMPERE_PLUS"))
    with pytest.raises(errors.BadRequestError, match="'same-compute-capability' is not available in TensorRT 10.8"):
        build_engine(onnx_file, options("fp32", 10, hardware_compatibility="same-compute-capability"))


def test_timing_cache_goes_in_and_comes_back(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    calls = install(monkeypatch, "10.13.0")
    result = build_engine(onnx_file, options("fp32", 10, timing_cache=b"old"))
    assert names(calls, "set_timing_cache") == [("set_timing_cache", b"old", False)]
    assert result.timing_cache == b"CACHE:old"


def test_a_mismatched_timing_cache_is_replaced_by_a_fresh_one(monkeypatch: pytest.MonkeyPatch,
                                                              onnx_file: Path) -> None:
    calls = install(monkeypatch, "10.13.0", cache_mismatch=True)
    result = build_engine(onnx_file, options("fp32", 10, timing_cache=b"from-another-gpu"))
    assert [c[1] for c in names(calls, "set_timing_cache")] == [b"from-another-gpu", b""]
    assert result.timing_cache == b"CACHE:"


def test_none_from_build_serialized_network_reports_the_logged_errors(monkeypatch: pytest.MonkeyPatch,
                                                                     onnx_file: Path) -> None:
    install(monkeypatch, "10.13.0", build_fails_with="Network has dynamic or shape inputs, but no profile")
    with pytest.raises(errors.BuildError, match="could not build the engine: Network has dynamic") as e:
        build_engine(onnx_file, options("fp32", 10))
    assert e.value.exit_code == errors.EXIT_USER_ERROR


def test_insufficient_workspace_is_an_infrastructure_error(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    install(monkeypatch, "10.13.0", build_fails_with=(
        "Could not find any implementation for node gemm due to insufficient workspace"))
    with pytest.raises(errors.ResourceError, match="Raise engine.workspaceMiB") as e:
        build_engine(onnx_file, options("fp32", 10))
    assert e.value.exit_code == errors.EXIT_INFRA_ERROR


def test_parser_errors_are_unsupported_ops(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    install(monkeypatch, "10.13.0", parser_errors=("No importer registered for op: Igamma",))
    with pytest.raises(errors.UnsupportedOpError, match="ONNX parser rejected the model: No importer.*Igamma"):
        build_engine(onnx_file, options("fp32", 10))


def test_open_non_batch_dims_cannot_be_profiled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])])
    save(helper.make_model(graph), str(tmp_path / "open.onnx"))
    install(monkeypatch, "10.13.0")
    with pytest.raises(errors.BadRequestError, match="open dimensions.*model.input_shapes"):
        build_engine(tmp_path / "open.onnx", options("fp32", 10, inputs=(TensorSpec("x", "float32", (-1, -1)),)))


def test_require_tensorrt_tells_stubs_from_the_real_thing(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    stub = types.ModuleType("tensorrt")
    stub.__path__ = ["/site-packages/tensorrt"]  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", stub)
    with pytest.raises(errors.MissingDependencyError, match="has no Builder: it is type stubs"):
        require_tensorrt()
    install(monkeypatch, "11.4.0")
    assert require_tensorrt() == "11.4.0"
    assert tensorrt_major("11.4.0") == 11


def test_fp8_on_a_tensorrt_without_the_flag(monkeypatch: pytest.MonkeyPatch, onnx_file: Path) -> None:
    trt, _ = make_fake_tensorrt("10.13.0")
    del trt.BuilderFlag.FP8
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
    with pytest.raises(errors.UnsupportedPrecisionError, match="needs builder flag FP8"):
        build_engine(onnx_file, options("fp8", 10))
