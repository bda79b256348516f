"""Free disk, checked before the image builds and the real node start (a full disk fails far from its cause)."""
from __future__ import annotations

from pathlib import Path

import pytest

from trtop_dev.devcluster import diskspace, nodeconfig, realnode
from trtop_dev.devcluster.diskspace import GiB, Usage
from trtop_dev.devcluster.realnode import RealNode, RealNodeError


def test_enough_above_the_kubelets_threshold_passes() -> None:
    found = Usage(Path("/x"), free=10 * GiB, total=100 * GiB)
    assert diskspace.shortfall(found, need=7 * GiB, reserve_percent=2, purpose="p") is None  # 10 - 2 = 8 >= 7


def test_free_space_inside_the_kubelets_threshold_does_not_count() -> None:
    # 7.5 GiB free, but 2 of them are the kubelet's: a build of 6 would leave the node DiskPressure.
    found = Usage(Path("/cache"), free=int(7.5 * GiB), total=100 * GiB)
    why = diskspace.shortfall(found, need=6 * GiB, reserve_percent=2, purpose="Building the images")
    assert why is not None
    assert why.startswith("Building the images needs 6.0 GiB free on the filesystem of /cache above the 2%")
    assert "DiskPressure" in why and "7.5 GiB of 100 GiB is free" in why and "trtop dev cluster down" in why


def test_usage_of_a_folder_not_made_yet_is_its_parents(tmp_path: Path) -> None:
    found = diskspace.usage(tmp_path / "not" / "yet")
    assert found.path == tmp_path / "not" / "yet" and 0 < found.free <= found.total


def test_the_kubelet_evicts_at_the_threshold_the_checks_keep() -> None:
    config = nodeconfig.render_kubelet_config(socket=Path("/s"), pod_logs_dir=Path("/p"), resolv_conf=Path("/r"),
                                              client_ca=Path("/c"))
    assert config["evictionHard"]["nodefs.available"] == f"{nodeconfig.EVICTION_FREE_PERCENT}%"


def test_the_real_node_refuses_to_start_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realnode, "ensure_node_tools", lambda root: None)
    monkeypatch.setattr(diskspace, "usage", lambda path: Usage(path, free=GiB, total=100 * GiB))
    node = RealNode(tmp_path, "dev")
    with pytest.raises(RealNodeError, match=r"The real node needs 2\.0 GiB free .* 1\.0 GiB of 100 GiB is free"):
        node.start(tmp_path / "kubeconfig", kubectl=None, log=lambda m: None)  # type: ignore[arg-type]
    assert not node.node_dir.exists()  # refused before it claimed the machine or made its folder
