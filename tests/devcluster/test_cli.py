"""`trtop dev cluster up --dry-run` starts nothing and downloads nothing."""
from __future__ import annotations

import os
import re

import pytest

from trtop_dev.devcluster import cli, workspace
from trtop_dev.devcluster.tools import cache_dir, read_versions, tools_for


@pytest.mark.skipif(bool(tools_for(read_versions(workspace.repo_root()), cache_dir()).missing()),
                    reason="needs the tools built by hack/build-tools.sh")
def test_dry_run_uses_only_the_built_binaries(capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cluster", "up", "--name", "trtop-dryrun", "--dry-run"]) == 0
    out = capfd.readouterr().out
    downloads = re.findall(r"^# Download (\S+)", out, flags=re.M)
    assert len(downloads) == 5 and all(os.path.isabs(d) and os.access(d, os.X_OK) for d in downloads), downloads
    assert "https://" not in "".join(downloads) and "http://" not in "".join(downloads)
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in out
    assert "then apply 7 nodes" in out
    assert not (workspace.kwok_workdir(workspace.repo_root()) / "clusters" / "trtop-dryrun").exists()


def test_bad_pools_file_fails_with_a_message_and_starts_nothing(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools: [{name: x, count: 1, gpus: 8}]")
    assert cli.main(["cluster", "up", "--name", "trtop-never", "--pools", str(bad)]) == 1
    assert "unknown field(s) 'gpus'" in capsys.readouterr().err
    assert not (workspace.kwok_workdir(workspace.repo_root()) / "clusters" / "trtop-never").exists()


@pytest.mark.skipif(bool(tools_for(read_versions(workspace.repo_root()), cache_dir()).missing()),
                    reason="needs the tools built by hack/build-tools.sh")
def test_dry_run_says_whether_the_real_node_would_start(capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cluster", "up", "--name", "trtop-dryrun", "--dry-run"]) == 0
    assert "# then start the real node (kubelet + containerd): " in capfd.readouterr().out
    assert cli.main(["cluster", "up", "--name", "trtop-dryrun", "--dry-run", "--no-real-node"]) == 0
    assert "real node" not in capfd.readouterr().out
