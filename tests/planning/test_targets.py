"""Target discovery follows the cluster: GPU types present, selectors, cordons, explicit lists."""
from trtop.api.spec import parse_spec
from trtop.api.targets import Target
from trtop.planning.targets import discover_targets, nodes_for_target

from .conftest import cpu_node, gpu_node

SPEC = {"model": {"uri": "s3://m/x"}}


def test_auto_finds_one_target_per_gpu_type(mixed_cluster):
    targets = discover_targets(parse_spec(SPEC), mixed_cluster)
    assert [str(t) for t in targets] == ["8.0/NVIDIA-A100-SXM4-80GB", "8.9/NVIDIA-L4", "9.0/NVIDIA-H100-80GB-HBM3"]


def test_portable_engines_key_on_compute_capability_only(mixed_cluster):
    spec = parse_spec({**SPEC, "engine": {"hardwareCompatibility": "same-compute-capability"}})
    assert discover_targets(spec, mixed_cluster) == (Target("8.0"), Target("8.9"), Target("9.0"))


def test_cordoned_nodes_and_gpu_less_capacity_do_not_count():
    nodes = (gpu_node("h", "h100", schedulable=False), gpu_node("l", "l4", gpus=0), cpu_node("c"))
    assert discover_targets(parse_spec(SPEC), nodes) == ()


def test_serving_node_selector_limits_discovery(mixed_cluster):
    spec = parse_spec({**SPEC, "serving": {"nodeSelector": {"kubernetes.io/hostname": "l4-0"}}})
    assert discover_targets(spec, mixed_cluster) == (Target("8.9", "NVIDIA-L4"),)


def test_explicit_targets_without_auto(mixed_cluster):
    spec = parse_spec({**SPEC, "engine": {"targets": ["cpu"]}})
    assert discover_targets(spec, mixed_cluster) == (Target("cpu"),)
    assert [n.name for n in nodes_for_target(Target("cpu"), mixed_cluster)] == ["cpu-0", "cpu-1"]


def test_new_gpu_type_joining_adds_exactly_one_target(mixed_cluster):
    before = discover_targets(parse_spec(SPEC), mixed_cluster[:4])
    after = discover_targets(parse_spec(SPEC), mixed_cluster)
    assert set(after) - set(before) == {Target("8.9", "NVIDIA-L4")}
