"""The kind provider's config: same labels on real workers, GPUs added through status patches."""
from __future__ import annotations

from trtop import names
from trtop_dev.devcluster.kind import build_kind_config, gpu_capacity_patches, worker_names
from trtop_dev.devcluster.pools import Gpu, Pool, read_pools


def test_one_labelled_worker_per_pool_node_and_no_kubelet_owned_labels() -> None:
    config = build_kind_config(read_pools())
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane"] + ["worker"] * 7
    h100 = config["nodes"][1]["labels"]
    assert h100[names.GFD_PRODUCT] == "NVIDIA-H100-80GB-HBM3" and h100[names.LABEL_DEV_POOL] == "h100"
    assert not any(k.startswith("kubernetes.io/") for n in config["nodes"][1:] for k in n["labels"])


def test_gpu_capacity_patches_name_kinds_workers_in_config_order() -> None:
    pools = [Pool(name="cpu", count=1), Pool(name="l4", count=2, gpu=Gpu("NVIDIA-L4", "8.9", 1))]
    assert worker_names("dev", 3) == ["dev-worker", "dev-worker2", "dev-worker3"]
    patches = gpu_capacity_patches("dev", pools)
    assert set(patches) == {"dev-worker2", "dev-worker3"}
    assert patches["dev-worker2"][0] == {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "1"}
