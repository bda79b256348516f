"""The runner's Node: registration, the Ready heartbeat and the Lease in kube-node-lease.

A CPU node (no GPU resources, no GPU Feature Discovery labels) labelled
``trtop.io/local-runner=true`` and WITHOUT kwok's ``kwok.x-k8s.io/node`` annotation, so
kwok leaves it and its pods alone. The capacity is advertised, not enforced. Renewing the
Lease and the Ready condition keeps the node lifecycle controller from tainting it
unreachable. Builders are pure; ``NodeAgent`` does the API calls. Called by
``trtop_dev.localrunner.runner``.
"""
from __future__ import annotations

import datetime as dt
import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trtop import names, versions
from trtop_dev.localrunner.kube import MERGE_PATCH, Kube, KubeError
from trtop_dev.localrunner.status import now

log = logging.getLogger(__name__)

HOST_IP = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40  # the kubelet's default nodeLeaseDurationSeconds
HEARTBEAT_SECONDS = 10.0


@dataclass(frozen=True)
class NodeShape:
    """What the node advertises: capacity = allocatable, plus extra labels and taints."""

    cpu: str = "32"
    memory: str = "128Gi"
    pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()


def parse_taint(text: str) -> dict[str, str]:
    """``key=value:Effect`` or ``key:Effect`` -> a taint (for ``--taint``)."""
    body, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not body:
        raise ValueError(f"taint {text!r}: write KEY=VALUE:EFFECT or KEY:EFFECT, EFFECT one of "
                         "NoSchedule, PreferNoSchedule, NoExecute")
    key, _, value = body.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def build_node(name: str, shape: NodeShape) -> dict[str, Any]:
    """The Node's metadata and spec, for server-side apply."""
    labels = {
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": _arch(),
        names.LABEL_LOCAL_RUNNER: "true", **shape.labels,
    }
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"taints": [dict(t) for t in shape.taints]}}


def build_node_status(name: str, shape: NodeShape, *, ready: bool, at: str,
                      previous: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``status`` of a nodes/status merge patch: resources, conditions, addresses, nodeInfo."""
    resources = {"cpu": shape.cpu, "memory": shape.memory, "pods": str(shape.pods), "ephemeral-storage": "100Gi"}
    before = {c.get("type"): c for c in previous}

    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        old = before.get(kind)
        since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else at
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": at, "lastTransitionTime": since}

    ready_cond = (cond("Ready", "True", "KubeletReady", "the trtop local runner is running pods as local processes")
                  if ready else cond("Ready", "False", "KubeletNotReady", "the trtop local runner has stopped"))
    return {
        "capacity": resources, "allocatable": resources,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "local runner: not measured"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "local runner: not measured"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "local runner: not measured"),
            ready_cond,
        ],
        "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": _arch(), "operatingSystem": "linux", "osImage": "trtop local runner",
            "kernelVersion": platform.release(), "containerRuntimeVersion": "local-process://trtop",
            "kubeletVersion": f"trtop-local-runner-{versions.TRTOP_VERSION}", "kubeProxyVersion": "",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    }


def build_lease(name: str, node_uid: str, at: dt.datetime) -> dict[str, Any]:
    """The node's Lease (owned by the Node, so it goes when the node goes)."""
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                 "renewTime": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    }


class NodeAgent:
    """Registers the node and keeps it alive; one call per heartbeat."""

    def __init__(self, kube: Kube, name: str, shape: NodeShape) -> None:
        self.kube, self.name, self.shape = kube, name, shape
        self.path = f"/api/v1/nodes/{name}"
        self._uid = ""

    def register(self) -> None:
        existing = self.kube.get_or_none(self.path)
        annotations = (existing or {}).get("metadata", {}).get("annotations") or {}
        if names.KWOK_NODE_ANNOTATION in annotations:
            raise KubeError("register", self.path, 409, f"node {self.name} is a kwok node ({names.KWOK_NODE_ANNOTATION}"
                            f"={annotations[names.KWOK_NODE_ANNOTATION]}): pick another --node-name")
        node = self.kube.apply(self.path, build_node(self.name, self.shape))
        self._uid = node["metadata"]["uid"]
        self.heartbeat()

    def heartbeat(self, ready: bool = True) -> None:
        """Post the conditions and renew the Lease (registering again if someone deleted the node)."""
        node = self.kube.get_or_none(self.path)
        if node is None:
            log.warning("node %s was deleted from the cluster; registering it again", self.name)
            node = self.kube.apply(self.path, build_node(self.name, self.shape))
        self._uid = node["metadata"]["uid"]
        status = build_node_status(self.name, self.shape, ready=ready, at=now(),
                                   previous=node.get("status", {}).get("conditions") or [])
        self.kube.patch(self.path + "/status", {"status": status}, MERGE_PATCH)
        lease = build_lease(self.name, self._uid, dt.datetime.now(dt.timezone.utc))
        self.kube.apply(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}", lease)

    def ready_for_pods(self) -> bool:
        """Ready and without the not-ready taint the node lifecycle controller puts on new nodes."""
        node = self.kube.get(self.path)
        taints = node.get("spec", {}).get("taints") or []
        return not any(t.get("key", "").startswith("node.kubernetes.io/not-ready") for t in taints)

    def leave(self, delete: bool) -> None:
        """Delete the node (its Lease goes with it), or mark it NotReady."""
        if delete:
            self.kube.delete(self.path)
        else:
            self.heartbeat(ready=False)


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
