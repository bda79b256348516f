"""Reading the engine request: JSON from a file, stdin or the environment, or flags for a person."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.convert.conftest import make_request
from trtop import names, versions
from trtop.api.engine import BatchProfile, ModelSource, engine_key
from trtop.api.targets import Target
from trtop.convert import errors
from trtop.convert.cli import build_parser
from trtop.convert.request import BuilderSettings, check_request, read_request


def args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def test_flags_make_the_key_the_operator_would(tmp_path: Path) -> None:
    request = read_request(args("--model", "s3://b/m.keras", "--target", "8.9/NVIDIA-L4", "--precision", "fp16",
                                "--batch", "1,4,16", "--store", str(tmp_path)), {})
    assert request.model == ModelSource("s3://b/m.keras", "keras")
    assert request.target == Target.parse("8.9/NVIDIA-L4") and request.backend == "tensorrt"
    assert request.key == engine_key(
        model=request.model, target=request.target, backend="tensorrt", precision="fp16",
        batch=BatchProfile(1, 4, 16), method="onnx", workspace_mib=4096, hardware_compatibility="none",
        builder_options={}, trt_version=versions.TENSORRT_VERSION, scope="cli")
    assert request.store_uri == str(tmp_path)


def test_flags_for_cpu_and_shapes() -> None:
    request = read_request(args("--model", "/m/sm", "--input-shape", "image=-1,224,224,3", "--store", "/s",
                                "--builder-option", "ort_optimization_level=basic"), {})
    assert request.backend == "onnxruntime" and request.model.format == "savedmodel"
    assert request.model.input_shapes == {"image": (-1, 224, 224, 3)}
    assert request.builder_options == {"ort_optimization_level": "basic"}


def test_json_from_file_stdin_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request = make_request("s3://b/m.onnx", "onnx", "s3://engines/x")
    (tmp_path / "r.json").write_text(request.to_json())
    assert read_request(args("--request", str(tmp_path / "r.json")), {}) == request
    monkeypatch.setattr("sys.stdin", io.StringIO(request.to_json()))
    assert read_request(args("--request", "-"), {}) == request
    assert read_request(args(), {names.ENV_ENGINE_REQUEST: request.to_json()}) == request


def test_store_precedence() -> None:
    request = make_request("m.onnx", "onnx", "")
    env = {names.ENV_ENGINE_REQUEST: request.to_json(), names.ENV_STORE_URI: "/from-env"}
    assert read_request(args(), env).store_uri == "/from-env"
    assert read_request(args("--store", "/from-flag"), env).store_uri == "/from-flag"
    with pytest.raises(errors.BadRequestError, match="no engine store"):
        read_request(args(), {names.ENV_ENGINE_REQUEST: request.to_json()})


@pytest.mark.parametrize("argv, message", [
    ((), "give --request FILE, TRTOP_ENGINE_REQUEST, or at least --model URI"),
    (("--model", "m.onnx", "--batch", "1,8"), "--batch '1,8' is not MIN,OPT,MAX"),
    (("--model", "m.onnx", "--target", "hopper"), "--target 'hopper'"),
    (("--model", "m.onnx", "--precision", "fp4"), "--precision 'fp4' is not one of"),
    (("--model", "m.onnx", "--input-shape", "x=a,b"), "is not NAME=D0,D1"),
    (("--request", "/no/such/file.json"), "--request /no/such/file.json: No such file"),
])
def test_bad_flags(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(errors.BadRequestError, match=message):
        read_request(args(*argv, "--store", "/s"), {})


def test_malformed_json_is_a_bad_request() -> None:
    with pytest.raises(errors.BadRequestError, match="not valid JSON of an EngineRequest"):
        read_request(args(), {names.ENV_ENGINE_REQUEST: '{"key": "e-1"}', names.ENV_STORE_URI: "/s"})


@pytest.mark.parametrize("changes, message", [
    ({"batch": BatchProfile(4, 2, 8)}, "need 1 <= min <= opt <= max"),
    ({"workspace_mib": 0}, "must be positive"),
    ({"backend": "tensorrt"}, "cannot build for target 'cpu'"),
    ({"method": "tf-trt"}, "for an ONNX model use method 'onnx'"),
    ({"builder_options": {"fast": "1"}}, r"unknown builder options \['fast'\]; known ones are optimization_level"),
    ({"builder_options": {"optimization_level": "9"}}, "not in 0..5"),
    ({"builder_options": {"verify_atol": "small"}}, "could not convert"),
])
def test_contradictions_are_found_before_fetching(changes: dict[str, object], message: str) -> None:
    with pytest.raises(errors.BadRequestError, match=message):
        check_request(make_request("m.onnx", "onnx", "/s", **changes))


def test_builder_settings_parse_strings() -> None:
    settings = BuilderSettings.parse({"optimization_level": "5", "version_compatible": "true", "verify_atol": "0.5"})
    assert settings == BuilderSettings(optimization_level=5, version_compatible=True, verify_atol=0.5)
    assert BuilderSettings.parse({"profile_per_bucket": "yes"}).profile_per_bucket
    assert not BuilderSettings.parse({"profile_per_bucket": "false"}).profile_per_bucket
