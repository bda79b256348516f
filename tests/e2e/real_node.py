"""The dev cluster's real node for e2e tests: its name once Ready, or a skip that says why.

A failure instead of a skip where ``$TRTOP_REQUIRE_REAL_NODE=1`` (.ci/run sets it), so CI
never passes by skipping the tests that run real containers.
"""
from __future__ import annotations

import os

import pytest

from trtop_dev.devcluster import nodeconfig, workspace
from trtop_dev.devcluster.realnode import RealNode
from trtop_dev.devcluster.testing import DevCluster


def require_real_node(dev_cluster: DevCluster) -> str:
    node = dev_cluster.kubectl("get", "node", nodeconfig.NODE_NAME, "--ignore-not-found", "-o", "name")
    if not node.strip():
        reason = (RealNode(workspace.repo_root(), dev_cluster.name).why_not() if dev_cluster.name else None) \
            or "the test cluster was started without one (--no-real-node, or it is not this checkout's)"
        if os.environ.get("TRTOP_REQUIRE_REAL_NODE") == "1":
            pytest.fail(f"no real node: {reason}")
        pytest.skip(f"no real node: {reason}")
    dev_cluster.kubectl("wait", "--for=condition=Ready", "--timeout=60s", f"node/{nodeconfig.NODE_NAME}")
    return nodeconfig.NODE_NAME
