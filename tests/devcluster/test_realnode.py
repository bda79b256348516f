"""When the real node cannot start, `up` says why (and runs the kwok nodes only)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trtop_dev.devcluster import realnode, workspace
from trtop_dev.devcluster.realnode import RealNode


def test_without_root_the_reason_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert RealNode(tmp_path, "c").why_not() == "it needs root (the kubelet manages cgroups, mounts and iptables)"


@pytest.mark.skipif(os.geteuid() != 0, reason="the claim is checked after the root check")
def test_a_node_claimed_by_another_live_cluster_is_left_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.node"
    other.mkdir()
    (other / "kubelet.pid").write_text(str(os.getpid()))  # a live process stands for its kubelet
    claim = tmp_path / "realnode.json"
    claim.write_text(json.dumps({"cluster": "trtop-dev", "repo": "/src/trtop", "node_dir": str(other)}))
    monkeypatch.setattr(realnode, "CLAIM", claim)
    monkeypatch.setattr(realnode.RealNode, "node_dir", property(lambda self: tmp_path / "mine.node"))
    monkeypatch.setattr(realnode, "node_tools_for", lambda *a: type("T", (), {"missing": lambda self: []})())
    reason = RealNode(workspace.repo_root(), "trtop-test").why_not()
    assert reason is not None and reason.startswith("this machine's real node belongs to cluster trtop-dev of /src/trtop")


def test_a_claim_whose_kubelet_is_gone_is_stale(tmp_path: Path) -> None:
    gone = tmp_path / "gone.node"
    gone.mkdir()
    (gone / "kubelet.pid").write_text("999999999")
    assert not realnode._claim_alive({"node_dir": str(gone)})
    assert not realnode._claim_alive({"node_dir": str(tmp_path / "missing")})


def test_stopping_a_node_another_cluster_took_over_only_drops_our_folder(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ours = tmp_path / "mine.node"
    ours.mkdir()
    (ours / "kubelet.log").write_text("old")
    claim = tmp_path / "realnode.json"
    claim.write_text(json.dumps({"cluster": "trtop-b", "repo": "/src", "node_dir": str(tmp_path / "theirs.node")}))
    monkeypatch.setattr(realnode, "CLAIM", claim)
    monkeypatch.setattr(realnode.RealNode, "node_dir", property(lambda self: ours))
    monkeypatch.setattr(realnode, "_cleanup", lambda *a: pytest.fail("the other cluster's node was cleaned up"))
    RealNode(tmp_path, "trtop-a").stop(lambda message: None)
    assert not ours.exists() and claim.is_file()
