"""Pools YAML -> Node manifests: the fake GPU nodes look like GFD-labelled real ones."""
from __future__ import annotations

import pytest

from trtop import names
from trtop.api.targets import gpu_target_of_node
from trtop_dev.devcluster.pools import Gpu, Pool, PoolsError, build_node, build_nodes, gpu_family, load_pools, read_pools


def _labels(node: dict) -> dict[str, str]:
    return node["metadata"]["labels"]


def test_default_pools_have_the_gpu_types_the_project_needs() -> None:
    nodes = build_nodes(read_pools())
    products = [_labels(n).get(names.GFD_PRODUCT, "cpu") for n in nodes]
    assert products.count("NVIDIA-H100-80GB-HBM3") == 2
    assert products.count("NVIDIA-A100-SXM4-80GB") == 2
    assert products.count("NVIDIA-L4") == 1
    assert products.count("cpu") == 2
    assert len({n["metadata"]["name"] for n in nodes}) == len(nodes) == 7


def test_h100_node_carries_gfd_labels_capacity_and_the_kwok_annotation() -> None:
    pool = Pool(name="h100", count=2, cpu="192", memory="2Ti",
                gpu=Gpu(product="NVIDIA-H100-80GB-HBM3", compute_capability="9.0", count=8, memory_mib=81559,
                        mig_capable=True))
    node = build_node(pool, 1)
    labels = _labels(node)
    assert node["metadata"]["name"] == "h100-1" and labels["kubernetes.io/hostname"] == "h100-1"
    assert labels[names.GFD_PRODUCT] == "NVIDIA-H100-80GB-HBM3"
    assert (labels[names.GFD_CC_MAJOR], labels[names.GFD_CC_MINOR]) == ("9", "0")
    assert labels[names.GFD_FAMILY] == "hopper"
    assert labels[names.GFD_MEMORY] == "81559"
    assert labels[names.GFD_COUNT] == "8"
    assert labels[names.GFD_MIG_CAPABLE] == "true"
    assert labels[names.GFD_SHARING_STRATEGY] == "none" and labels[names.GFD_REPLICAS] == "1"
    assert labels[names.GFD_DRIVER_VERSION] == "580.159.04"
    assert labels["nvidia.com/cuda.driver-version.revision"] == "04"
    assert labels[names.GFD_CUDA_RUNTIME_VERSION] == "13.0"
    assert labels[names.LABEL_DEV_POOL] == "h100"
    assert node["metadata"]["annotations"][names.KWOK_NODE_ANNOTATION] == "fake"
    for key in ("capacity", "allocatable"):
        assert node["status"][key] == {"cpu": "192", "memory": "2Ti", "pods": "110", "ephemeral-storage": "1Ti",
                                       names.GPU_RESOURCE: "8"}
    # The operator's own reading of the labels agrees.
    target = gpu_target_of_node(labels, with_product=True)
    assert target is not None and str(target) == "9.0/NVIDIA-H100-80GB-HBM3"


def test_cpu_node_has_no_gpu_labels_or_resource() -> None:
    node = build_node(Pool(name="cpu", count=1), 0)
    assert not any(k.startswith("nvidia.com/") for k in _labels(node))
    assert names.GPU_RESOURCE not in node["status"]["capacity"]


def test_time_slicing_marks_the_product_shared_and_multiplies_the_resource() -> None:
    gpu = Gpu(product="Tesla-T4", compute_capability="7.5", count=2, replicas=4)
    node = build_node(Pool(name="t4", count=1, gpu=gpu), 0)
    assert _labels(node)[names.GFD_PRODUCT] == "Tesla-T4-SHARED"
    assert _labels(node)[names.GFD_SHARING_STRATEGY] == "time-slicing"
    assert _labels(node)[names.GFD_REPLICAS] == "4"
    assert _labels(node)[names.GFD_COUNT] == "2"
    assert node["status"]["allocatable"][names.GPU_RESOURCE] == "8"
    target = gpu_target_of_node(_labels(node), with_product=True)
    assert target is not None and target.product == "Tesla-T4"


def test_pool_nodes_are_kwok_nodes_and_local_runner_is_gone() -> None:
    node = build_node(Pool(name="cpu", count=1), 0)
    assert node["metadata"]["annotations"][names.KWOK_NODE_ANNOTATION] == "fake"
    with pytest.raises(PoolsError, match="localRunner"):  # the real node replaced it
        load_pools("pools:\n- name: local\n  count: 1\n  localRunner: true\n")


def test_extra_labels_and_taints_pass_through() -> None:
    pools = load_pools("""
pools:
- name: gpu-tainted
  count: 1
  labels: {team: vision}
  taints: [{key: nvidia.com/gpu, value: "present", effect: NoSchedule}]
  gpu: {product: NVIDIA-L4, computeCapability: "8.9", count: 1}
""")
    node = build_nodes(pools)[0]
    assert _labels(node)["team"] == "vision"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert _labels(node)[names.GFD_FAMILY] == "ada-lovelace"


def test_defaults_set_driver_and_cuda_versions_and_pools_may_override_them() -> None:
    pools = load_pools("""
defaults: {driverVersion: "570.86.15", cudaVersion: "12.8"}
pools:
- {name: a, count: 1, gpu: {product: NVIDIA-L4, computeCapability: "8.9", count: 1}}
- {name: b, count: 1, gpu: {product: NVIDIA-L4, computeCapability: "8.9", count: 1, cudaVersion: "13.0"}}
""")
    a, b = build_nodes(pools)
    assert _labels(a)[names.GFD_DRIVER_VERSION] == "570.86.15" and _labels(a)[names.GFD_CUDA_RUNTIME_VERSION] == "12.8"
    assert _labels(b)[names.GFD_CUDA_RUNTIME_VERSION] == "13.0"


@pytest.mark.parametrize(("cc", "family"), [
    ((7, 0), "volta"), ((7, 5), "turing"), ((8, 0), "ampere"), ((8, 6), "ampere"), ((8, 9), "ada-lovelace"),
    ((9, 0), "hopper"), ((10, 0), "blackwell"), ((12, 0), "blackwell"), ((11, 0), "undefined"),
])
def test_family_follows_gpu_feature_discovery(cc: tuple[int, int], family: str) -> None:
    assert gpu_family(*cc) == family


def test_zero_count_pool_makes_no_nodes() -> None:
    assert build_nodes(load_pools("pools: [{name: gone, count: 0}]")) == []


@pytest.mark.parametrize(("text", "fragment"), [
    ("nodes: []", "'pools' list"),
    ("pools: [{name: x, count: 1, gpus: 2}]", "unknown field(s) 'gpus'"),
    ("pools: [{name: X_bad, count: 1}]", "lower-case DNS label"),
    ("pools: [{name: x, count: -1}]", "count must be a whole number >= 0"),
    ("pools: [{name: x, count: 1}, {name: x, count: 2}]", "used twice"),
    ("pools: [{name: x, count: 1, gpu: {product: NVIDIA-L4, computeCapability: 8.9, count: 1}}]",
     "'MAJOR.MINOR' in quotes"),
    ("pools: [{name: x, count: 1, gpu: {product: NVIDIA L4, computeCapability: '8.9', count: 1}}]", "spaces as '-'"),
    ("pools: [{name: x, count: 1, gpu: {product: NVIDIA-L4, computeCapability: '8.9', count: 0}}]", "count must be"),
    ("pools: [{name: x, count: 1, labels: {a: 1}}]", "quote numbers"),
    ("pools: [{name: x, count: 1", "not valid YAML"),
])
def test_bad_pools_files_say_what_to_fix(text: str, fragment: str) -> None:
    with pytest.raises(PoolsError, match=None) as err:
        load_pools(text, source="my-pools.yaml")
    assert fragment in str(err.value) and str(err.value).startswith("my-pools.yaml")


def test_missing_pools_file_is_a_pools_error(tmp_path) -> None:
    with pytest.raises(PoolsError, match="cannot read pools file"):
        read_pools(tmp_path / "nope.yaml")
