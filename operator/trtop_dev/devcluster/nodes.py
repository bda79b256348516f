"""Applies a pools file's nodes to a running cluster, and removes pools that left the file.

Node status (capacity, allocatable) is a subresource: apply writes it only on create, so
it is then patched through ``--subresource=status`` to make a changed GPU count stick.
Called by ``trtop dev cluster up``, ``trtop dev nodes apply`` and tests that add or remove
a GPU type while running.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from trtop import names
from trtop_dev.devcluster.kubectl import Kubectl
from trtop_dev.devcluster.pools import Pool, build_nodes


@dataclass(frozen=True)
class NodesResult:
    applied: list[str]
    removed: list[str]


def apply_pools(kubectl: Kubectl, pools: Sequence[Pool], *, prune: bool = True) -> NodesResult:
    """Create/update every node of ``pools``; with ``prune``, delete pool nodes not in ``pools``."""
    nodes = build_nodes(pools)
    if nodes:
        kubectl.apply(nodes)
        for node in nodes:
            status = {"status": {k: node["status"][k] for k in ("capacity", "allocatable")}}
            kubectl.run("patch", "node", node["metadata"]["name"], "--subresource=status",
                        "--type=merge", "-p", json.dumps(status))
    removed: list[str] = []
    if prune:
        wanted = {node["metadata"]["name"] for node in nodes}
        existing = kubectl.json("get", "nodes", "-l", names.LABEL_DEV_POOL)["items"]
        removed = sorted(n["metadata"]["name"] for n in existing if n["metadata"]["name"] not in wanted)
        if removed:
            kubectl.run("delete", "node", *removed, "--wait=false")
    return NodesResult(applied=[node["metadata"]["name"] for node in nodes], removed=removed)


def describe_nodes(kubectl: Kubectl) -> list[str]:
    """One line per pool node: name, ready, GPU product x allocatable (for ``status``)."""
    lines = []
    for node in kubectl.json("get", "nodes")["items"]:
        labels = node["metadata"].get("labels", {})
        ready = next((c["status"] for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), "?")
        gpus = node.get("status", {}).get("allocatable", {}).get(names.GPU_RESOURCE)
        gpu = f"{labels.get(names.GFD_PRODUCT, '?')} x{gpus} (cc {labels.get(names.GFD_CC_MAJOR)}.{labels.get(names.GFD_CC_MINOR)})" if gpus else "cpu only"
        lines.append(f"{node['metadata']['name']:<16} ready={ready:<5} {gpu}")
    return lines
