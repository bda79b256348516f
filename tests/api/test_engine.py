"""Engine keys: same inputs -> same key; anything that changes the bytes -> a new key."""
import dataclasses

from trtop.api.engine import BatchProfile, EngineRecord, EngineRequest, ModelSource, TensorSpec, engine_key
from trtop.api.targets import Target

BASE = dict(
    model=ModelSource("s3://b/m", "savedmodel"), target=Target("9.0", "NVIDIA-H100-80GB-HBM3"),
    backend="tensorrt", precision="fp16", batch=BatchProfile(1, 8, 32), method="onnx", workspace_mib=4096,
    hardware_compatibility="none", builder_options={}, trt_version="10.13.0",
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
                       build_seconds=1.5)
    assert EngineRecord.from_json(rec.to_json()) == rec
    assert dataclasses.replace(rec, build_seconds=2.0) != rec
