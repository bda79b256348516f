"""Spec parsing: defaults that match the CRD, and clear errors for what the schema can't check."""
import pytest

from trtop.api.errors import SpecError
from trtop.api.spec import parse_spec
from trtop.api.targets import Target


def spec(**over):
    base = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"}}
    base.update(over)
    return base


def test_defaults():
    s = parse_spec(spec())
    assert s.engine.precision == "fp32" and s.engine.auto_targets and s.engine.targets == ()
    assert (s.engine.batch.min, s.engine.batch.opt, s.engine.batch.max) == (1, 8, 32)
    assert s.scaling.mode == "builtin" and s.scaling.min_replicas == 1 and s.serving.port == 8000


def test_explicit_targets_are_parsed_and_normalized():
    s = parse_spec(spec(engine={"targets": ["cpu", "8.9/NVIDIA-L4-SHARED"]}))
    assert not s.engine.auto_targets
    assert s.engine.targets == (Target("8.9", "NVIDIA-L4"), Target("cpu"))


@pytest.mark.parametrize("raw,field,fragment", [
    ({"model": {"uri": "ftp://x/y"}}, "model.uri", "ftp"),
    ({"model": {"uri": "/plain/path"}}, "model.uri", "(none)"),
    ({"model": {"uri": "s3://b/m", "format": "pickle"}}, "model.format", "pickle"),
    ({"model": {"uri": "s3://b/m", "digest": "md5:abc"}}, "model.digest", "sha256"),
    ({"model": {"uri": "s3://b/m", "inputShapes": {"x": [0, 3]}}}, "model.inputShapes.x", "positive"),
    ({"model": {"uri": "s3://b/m"}, "engine": {"batch": {"min": 8, "opt": 4, "max": 16}}}, "engine.batch", "min <= opt"),
    ({"model": {"uri": "s3://b/m"}, "engine": {"targets": ["hopper"]}}, "engine.targets", "hopper"),
    ({"model": {"uri": "s3://b/m"}, "engine": {"precision": "int4"}}, "engine.precision", "int4"),
    ({"model": {"uri": "s3://b/m"}, "scaling": {"minReplicas": 5, "maxReplicas": 2}}, "scaling", "minReplicas"),
    ({"model": {"uri": "s3://b/m", "format": "onnx"}, "engine": {"method": "tf-trt"}}, "engine.method", "ONNX"),
    ({}, "model", "required"),
])
def test_semantic_errors_name_the_field_and_say_why(raw, field, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_zero_min_replicas_is_allowed_for_scale_to_zero():
    assert parse_spec(spec(scaling={"minReplicas": 0, "maxReplicas": 3})).scaling.min_replicas == 0
