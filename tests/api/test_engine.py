"""Engine keys: same inputs (and scope) -> same key; anything that changes the bytes -> a new key.
Engine records: one strict parser that names the bad field."""
import dataclasses
import json

import pytest

from trtop.api.engine import (
    BatchProfile, EngineRecord, EngineRequest, ModelSource, RecordError, TensorSpec, engine_key, parse_record,
)
from trtop.api.targets import Target

BASE = dict(
    model=ModelSource("s3://b/m", "savedmodel"), target=Target("9.0", "NVIDIA-H100-80GB-HBM3"),
    backend="tensorrt", precision="fp16", batch=BatchProfile(1, 8, 32), method="onnx", workspace_mib=4096,
    hardware_compatibility="none", builder_options={}, trt_version="10.13.0", scope="team-a",
)


def test_key_is_stable_and_dns_safe():
    k = engine_key(**BASE)
    assert k == engine_key(**BASE)
    assert k.startswith("e-") and len(k) == 18 and k[2:].isalnum() and k.islower()


def test_every_identity_field_changes_the_key():
    base = engine_key(**BASE)
    variants = [
        {"model": ModelSource("s3://b/m2", "savedmodel")},
        {"model": ModelSource("s3://b/m", "savedmodel", digest="sha256:" + "a" * 64)},
        {"target": Target("8.0", "NVIDIA-A100-SXM4-80GB")},
        {"precision": "fp32"},
        {"batch": BatchProfile(1, 16, 32)},
        {"workspace_mib": 2048},
        {"builder_options": {"x": "1"}},
        {"trt_version": "11.4.0"},  # a TensorRT upgrade rebuilds (users: "Version tag does not match")
        {"scope": "team-b"},  # same model URI in another namespace: another engine
    ]
    keys = {engine_key(**{**BASE, **v}) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_product_ignored_when_engines_are_portable_across_products():
    a = {**BASE, "hardware_compatibility": "same-compute-capability"}
    b = {**a, "target": Target("9.0", "NVIDIA-H200")}
    assert engine_key(**a) == engine_key(**b)
    assert engine_key(**BASE) != engine_key(**{**BASE, "target": Target("9.0", "NVIDIA-H200")})


def test_request_and_record_round_trip_json():
    req = EngineRequest(key=engine_key(**BASE), model=ModelSource("s3://b/m", "keras", input_shapes={"x": (-1, 3)}),
                        target=Target("9.0"), backend="tensorrt", store_uri="s3://engines")
    assert EngineRequest.from_json(req.to_json()) == req
    rec = EngineRecord(key=req.key, target=Target("cpu"), backend="onnxruntime", artifact="model.onnx",
                       precision="fp32", batch=BatchProfile(), inputs=(TensorSpec("x", "float32", (-1, 3)),),
                       outputs=(TensorSpec("y", "float32", (-1, 1)),), model_digest="sha256:00",
                       versions={"onnxruntime": "1.31"}, parity={"max_abs_error": 1e-7}, benchmark={},
                       build_seconds=1.5, sha256="ab" * 32, size=10)
    assert EngineRecord.from_json(rec.to_json()) == rec
    assert dataclasses.replace(rec, build_seconds=2.0) != rec


def test_a_key_needs_a_scope():
    with pytest.raises(ValueError, match="scope"):
        engine_key(**{**BASE, "scope": ""})


def record_doc() -> dict:
    return {
        "key": "e-0123456789abcdef", "target": {"cc": "9.0", "product": None}, "backend": "tensorrt",
        "artifact": "model.plan", "precision": "fp16", "batch": {"min": 1, "opt": 8, "max": 32},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}],
        "model_digest": "sha256:00", "versions": {"tensorrt": "10.13.0"}, "parity": {"max_abs_error": 0.001},
        "benchmark": {"batch_opt": {"p50_ms": 1.0, "throughput": 900}}, "build_seconds": 12.5,
        "sha256": "ab" * 32, "size": 1024,
    }


def test_a_valid_record_parses():
    record = parse_record(json.dumps(record_doc()), key="e-0123456789abcdef")
    assert record.artifact == "model.plan" and record.sha256 == "ab" * 32 and record.size == 1024
    assert record.benchmark == {"batch_opt": {"p50_ms": 1.0, "throughput": 900.0}}


@pytest.mark.parametrize("changes,match", [
    ({"parity": []}, "'parity' must be an object"),  # crashed every reconcile of the key before
    ({"parity": {"max_abs_error": "x"}}, r"parity\.max_abs_error must be a finite number"),
    ({"artifact": "../../escaped"}, "artifact '../../escaped' must be one file or folder name"),
    ({"artifact": "/etc/passwd"}, "must be one file or folder name"),
    ({"artifact": "engine.json"}, "must be one file or folder name"),
    ({"sha256": None}, "'sha256' is missing"),
    ({"sha256": "ABC"}, "is not 64 lower-case hex digits"),
    ({"size": -1}, "'size' must be an integer >= 0"),
    ({"backend": "evil.module:Attr"}, "backend 'evil.module:Attr' is not one of tensorrt, onnxruntime"),
    ({"key": "../e-1"}, "is not an engine key"),
    ({"target": {"cc": "nine"}}, "target: compute capability"),
    ({"batch": {"min": 8, "opt": 1, "max": 4}}, "min <= opt <= max"),
    ({"batch": {"min": True, "opt": 1, "max": 4}}, "'min' must be an integer"),
    ({"inputs": [{"name": "x", "dtype": "float32", "shape": "big"}]}, r"inputs\[0\]: shape must be a list"),
    ({"inputs": []}, "'inputs' must be a non-empty list"),
    ({"benchmark": {"batch_opt": [1]}}, "'batch_opt' must be an object"),
    ({"build_seconds": float("inf")}, "'build_seconds' must be a finite number"),
    ({"folder": "../x"}, "folder '../x'"),
    ({"buckets": [0, 64]}, "'buckets' must be a list of up to 64 batch sizes between 1 and batch.max"),
])
def test_malformed_records_are_refused_naming_the_field(changes, match):
    doc = {**record_doc(), **changes}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(RecordError, match=match):
        parse_record(json.dumps(doc), where="engine.json")


def test_a_record_read_from_another_keys_location_is_refused():
    with pytest.raises(RecordError, match="was read from the location of e-ffffffffffffffff"):
        parse_record(json.dumps(record_doc()), key="e-ffffffffffffffff")


@pytest.mark.parametrize("text", ["nope", "[1, 2]", "[" * 100000, '{"key": 1}', "x" * (2 << 20)])
def test_garbage_is_a_record_error_not_a_crash(text):
    with pytest.raises(RecordError):
        parse_record(text)
