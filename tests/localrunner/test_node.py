"""The runner's Node, Lease and taints (builders only)."""
from __future__ import annotations

import datetime as dt

import pytest

from trtop import names
from trtop_dev.localrunner.node import NodeShape, build_lease, build_node, build_node_status, parse_taint


def test_a_cpu_node_that_kwok_leaves_alone() -> None:
    node = build_node("local-runner", NodeShape(labels={"extra": "1"}, taints=[{"key": "k", "effect": "NoSchedule"}]))
    labels = node["metadata"]["labels"]
    assert labels[names.LABEL_LOCAL_RUNNER] == "true"
    assert labels["kubernetes.io/hostname"] == "local-runner" and labels["kubernetes.io/os"] == "linux"
    assert labels["extra"] == "1"
    assert names.KWOK_NODE_ANNOTATION not in node["metadata"]["annotations"]
    assert not any(k.startswith("nvidia.com/") for k in labels)
    assert node["spec"]["taints"] == [{"key": "k", "effect": "NoSchedule"}]


def test_status_advertises_resources_and_a_fresh_ready_condition() -> None:
    status = build_node_status("n", NodeShape(cpu="4", memory="8Gi", pods=20), ready=True, at="t1",
                               previous=[{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}])
    assert status["allocatable"] == status["capacity"]
    assert status["capacity"]["cpu"] == "4" and status["capacity"]["pods"] == "20"
    assert names.GPU_RESOURCE not in status["capacity"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastHeartbeatTime"], ready["lastTransitionTime"]) == ("True", "t1", "t0")
    gone = build_node_status("n", NodeShape(), ready=False, at="t2", previous=status["conditions"])
    ready = next(c for c in gone["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"]) == ("False", "t2")


def test_lease_is_owned_by_the_node_and_renewed_now() -> None:
    lease = build_lease("n", "uid-1", dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.timezone.utc))
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert lease["spec"]["renewTime"] == "2026-01-02T03:04:05.000678Z"
    assert lease["spec"]["holderIdentity"] == "n"


def test_parse_taint() -> None:
    assert parse_taint("a=b:NoSchedule") == {"key": "a", "value": "b", "effect": "NoSchedule"}
    assert parse_taint("trtop.io/x:NoExecute") == {"key": "trtop.io/x", "effect": "NoExecute"}
    with pytest.raises(ValueError, match="KEY=VALUE:EFFECT"):
        parse_taint("a=b")
