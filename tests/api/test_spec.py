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


def test_zero_min_replicas_parses_in_every_mode_and_the_operator_decides_builtin():
    """Whether the builtin autoscaler can come back from zero is the operator's setting (its wake query), so the
    spec's parser takes it (planning/admission.py refuses it where the operator has none: tests/planning)."""
    assert parse_spec(spec(scaling={"minReplicas": 0, "maxReplicas": 3})).scaling.min_replicas == 0
    assert parse_spec(spec(scaling={"mode": "external", "minReplicas": 0})).scaling.min_replicas == 0


def test_a_specific_and_a_product_target_of_one_cc_sort_side_by_side():
    s = parse_spec(spec(engine={"targets": ["auto", "8.9", "8.9/NVIDIA-L4"]}))
    assert s.engine.targets == (Target("8.9"), Target("8.9", "NVIDIA-L4")) and s.engine.auto_targets


HOSTILE = [
    ({"engine": {"targets": "auto"}}, "engine.targets"),
    ({"engine": {"targets": [{"cc": "8.9"}]}}, "engine.targets"),
    ({"engine": {"builderOptions": ["x"]}}, "engine.builderOptions"),
    ({"engine": {"batch": "big"}}, ""),
    ({"engine": {"builderImage": 7}}, "engine.builderImage"),
    ({"serving": {"resources": {"limits": {"cpu": "lots"}}}}, "serving.resources.limits.cpu"),
    ({"serving": {"resources": {"limits": "cpu"}}}, "serving.resources.limits"),
    ({"serving": {"resources": {"bogus": {}}}}, "serving.resources.bogus"),
    ({"serving": {"resources": ["x"]}}, "serving.resources"),
    ({"serving": {"env": [{"name": "TRTOP_ENGINE_SET", "value": "[]"}]}}, "serving.env[0].name"),
    ({"serving": {"env": [{"value": "x"}]}}, "serving.env[0]"),
    ({"serving": {"env": "A=B"}}, "serving.env"),
    ({"serving": {"tolerations": "all"}}, "serving.tolerations"),
    ({"serving": {"nodeSelector": ["a"]}}, "serving.nodeSelector"),
    ({"serving": {"podLabels": {"job-name": "x"}}}, "serving.podLabels"),
    ({"engine": {"podLabels": {"controller-uid": "x"}}}, "engine.podLabels"),
    ({"engine": {"podLabels": {"batch.kubernetes.io/job-name": "x"}}}, "engine.podLabels"),
    ({"serving": {"podLabels": {"team": "not a label value!"}}}, "serving.podLabels"),
    ({"serving": {"batching": {"maxQueueDelayMs": "soon"}}}, "serving.batching.maxQueueDelayMs"),
    ({"serving": {"batching": "fast"}}, "batching"),
    ({"serving": {"keepAwake": True}}, "serving.keepAwake"),
    ({"serving": {"keepAwake": "always"}}, "serving.keepAwake"),
    ({"serving": {"sharedMemory": "cuda"}}, "serving.sharedMemory"),
    ({"serving": {"slotHandoff": True}}, "serving.slotHandoff"),
    ({"serving": {"slotHandoff": "auto"}}, "serving.slotHandoff"),
    ({"serving": {"httpFrontend": "go"}}, "serving.httpFrontend"),
    ({"serving": {"httpFrontend": ["native"]}}, "serving.httpFrontend"),
    ({"serving": {"sidecars": {"name": "pre"}}}, "serving.sidecars"),
    ({"serving": {"sidecars": ["pre"]}}, "serving.sidecars[0]"),
    ({"serving": {"sidecars": [{"name": "server", "image": "i"}]}}, "serving.sidecars[0].name"),
    ({"serving": {"sidecars": [{"name": "Pre_1", "image": "i"}]}}, "serving.sidecars[0].name"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i"}, {"name": "a", "image": "j"}]}},
     "serving.sidecars[1].name"),
    ({"serving": {"sidecars": [{"name": "a"}]}}, "serving.sidecars[0].image"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "command": "run.sh"}]}}, "serving.sidecars[0].command"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "args": [1]}]}}, "serving.sidecars[0].args"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "env": [{"name": "K", "valueFrom": {
        "secretKeyRef": {"name": "store", "key": "secret"}}}]}]}}, "serving.sidecars[0].env[0]"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "env": [{"name": "TRTOP_X", "value": "1"}]}]}},
     "serving.sidecars[0].env[0].name"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "ports": [{"containerPort": 8001}]}]}},
     "serving.sidecars[0].ports[0].containerPort"),
    ({"serving": {"port": 9000, "sidecars": [{"name": "a", "image": "i", "ports": [{"containerPort": 9000}]}]}},
     "serving.sidecars[0].ports[0].containerPort"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "ports": [{"containerPort": 9100}]},
                               {"name": "b", "image": "i", "ports": [{"containerPort": 9100}]}]}},
     "serving.sidecars[1].ports[0].containerPort"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "ports": [{"containerPort": "http"}]}]}},
     "serving.sidecars[0].ports[0].containerPort"),
    ({"serving": {"sidecars": [{"name": "a", "image": "i", "resources": {"limits": {"cpu": "lots"}}}]}},
     "serving.sidecars[0].resources.limits.cpu"),
    ({"serving": {"sidecars": [{"name": f"s{i}", "image": "i"} for i in range(9)]}}, "serving.sidecars"),
    ({"scaling": {"target": "high"}}, "scaling.target"),
    ({"scaling": {"target": float("inf")}}, "scaling.target"),
    ({"rollout": {"maxSurge": "0", "maxUnavailable": "0"}}, "rollout"),
    ({"rollout": {"maxSurge": "0%", "maxUnavailable": 0}}, "rollout"),
    ({"rollout": {"maxSurge": "lots"}}, "rollout.maxSurge"),
    ({"rollout": {"maxUnavailable": -1}}, "rollout.maxUnavailable"),
    ({"rollout": {"whenFull": "Never"}}, "rollout.whenFull"),
    ({"replicas": True}, "replicas"),
    ({"model": {"uri": "s3://b/m", "inputShapes": ["x"]}}, ""),
    ({"model": "s3://b/m"}, "model"),
]


@pytest.mark.parametrize("over,field", HOSTILE)
def test_hostile_fields_are_spec_errors_naming_the_field_never_other_exceptions(over, field):
    with pytest.raises(SpecError) as info:
        parse_spec(spec(**over))
    assert info.value.field == field, str(info.value)


def test_shared_memory_and_sidecars_are_parsed():
    s = parse_spec(spec(serving={"sharedMemory": "system", "sidecars": [{
        "name": "pre", "image": "registry.example.com/pre:1", "command": ["pre"], "args": ["--shm"],
        "env": [{"name": "MODE", "value": "fast"}], "ports": [{"name": "metrics", "containerPort": 9100}],
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}))
    assert s.serving.shared_memory == "system"
    (pre,) = s.serving.sidecars
    assert (pre.name, pre.image, pre.command, pre.args) == ("pre", "registry.example.com/pre:1", ("pre",), ("--shm",))
    assert pre.env == ({"name": "MODE", "value": "fast"},)
    assert pre.ports == ({"name": "metrics", "containerPort": 9100, "protocol": "TCP"},)
    assert pre.resources == {"limits": {"cpu": "1", "memory": "1Gi"}}
    bare = parse_spec(spec())
    assert bare.serving.shared_memory == "off" and bare.serving.sidecars == ()


def test_a_serving_pod_takes_one_gpu_and_a_sidecar_none():
    """Another number was replaced by 1 in the pods while placement counted it: refused, with what to do instead."""
    base = {"model": {"uri": "s3://b/m"}}
    assert parse_spec({**base, "serving": {"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "2"}}}}).serving \
        .resources == {"limits": {"nvidia.com/gpu": "1", "cpu": "2"}}
    with pytest.raises(SpecError) as err:
        parse_spec({**base, "serving": {"resources": {"limits": {"nvidia.com/gpu": 2}}}})
    assert str(err.value).startswith("spec.serving.resources.limits.nvidia.com/gpu: is '2', but trtop gives each")
    assert "scale with replicas" in str(err.value)
    with pytest.raises(SpecError, match=r"serving\.sidecars\[0\]\.resources\.requests\.nvidia\.com/gpu: .*a sidecar "
                                        r"cannot take one"):
        parse_spec({**base, "serving": {"sidecars": [{"name": "c", "image": "x",
                                                       "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}})
