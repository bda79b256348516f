"""Pinned versions -> cache paths; the dev cluster's state stays inside the checkout."""
from __future__ import annotations

from pathlib import Path

import pytest

from trtop_dev.devcluster import workspace
from trtop_dev.devcluster.tools import ToolsError, parse_versions, read_versions, tools_for


def test_versions_file_parses_and_pins_every_tool() -> None:
    versions = read_versions(workspace.repo_root())
    assert versions["KUBERNETES_VERSION"].startswith("v1.36.")
    assert versions["ETCD_VERSION"].startswith("v3.6.")
    assert versions["KWOK_VERSION"].startswith("v0.8.")
    assert versions["HELM_VERSION"].startswith("v3.21.")


def test_bad_versions_line_is_reported() -> None:
    with pytest.raises(ToolsError, match="expected NAME=value"):
        parse_versions("KUBERNETES_VERSION v1.36.3")


def test_binaries_are_cached_by_version(tmp_path: Path) -> None:
    tools = tools_for({"KUBERNETES_VERSION": "v1.36.3", "ETCD_VERSION": "v3.6.16", "KWOK_VERSION": "v0.8.0",
                       "HELM_VERSION": "v3.21.4", "KIND_VERSION": "v0.32.0"}, tmp_path)
    assert tools.kubectl == tmp_path / "bin" / "kubernetes-v1.36.3" / "kubectl"
    assert tools.etcd == tmp_path / "bin" / "etcd-v3.6.16" / "etcd"
    assert tools.kwokctl == tmp_path / "bin" / "kwok-v0.8.0" / "kwokctl"
    assert len(tools.missing()) == 8 and len(tools.missing(with_kind=True)) == 9


def test_kubeconfig_lives_in_the_checkouts_work_folder() -> None:
    root = workspace.repo_root()
    assert workspace.kubeconfig_path(root) == root / ".work" / "dev-cluster" / "kubeconfig"
    assert workspace.kubeconfig_path(root, "trtop-test") == root / ".work" / "dev-cluster" / "trtop-test.kubeconfig"
    assert Path.home() / ".kube" not in workspace.kubeconfig_path(root).parents
