"""The local kubelet stand-in: runs the pods of ONE dev-cluster node as local processes.

For the demo and tests only (docs/local-runner.md): on the kwok dev cluster nothing runs
inside pods, so ``LocalRunner`` plays the kubelet for one node (``trtop dev runner``),
running each pod's command with its env and volumes mapped to local paths and reporting
status back through the API. Everything else stays the real control plane.
"""
from __future__ import annotations

from trtop_dev.localrunner.node import NodeShape
from trtop_dev.localrunner.runner import DEFAULT_NODE, LocalRunner

__all__ = ["DEFAULT_NODE", "LocalRunner", "NodeShape"]
