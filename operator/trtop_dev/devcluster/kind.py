"""The kind provider, for machines with a Docker engine: same node labels, real kubelets.

kind cannot fake GPUs: each pool node becomes a kind worker (a container) carrying the
pool's labels, and ``nvidia.com/gpu`` is added to its status capacity through the API (the
documented way to advertise an extended resource). Pods really run there, so kwok's
stages (Job delays, forced failures) do not apply. Called by ``trtop_dev.devcluster.cluster``.
"""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from trtop import names
from trtop_dev.devcluster import workspace
from trtop_dev.devcluster.kubectl import Kubectl
from trtop_dev.devcluster.pools import Pool, build_node
from trtop_dev.devcluster.tools import Tools, cache_dir, ensure_tools, read_versions, tools_for

Log = Callable[[str], None]
# kubelet's --node-labels refuses most kubernetes.io labels: the kubelet sets those itself.
_KUBELET_OWNED = ("kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch")


class KindError(RuntimeError):
    """kind cannot run here (no Docker) or failed."""


def build_kind_config(pools: Sequence[Pool]) -> dict[str, Any]:
    """A kind Cluster config: one control plane, one labelled worker per pool node (file order)."""
    workers = []
    for pool in pools:
        for index in range(pool.count):
            labels = build_node(pool, index)["metadata"]["labels"]
            workers.append({"role": "worker",
                            "labels": {k: v for k, v in labels.items() if k not in _KUBELET_OWNED}})
    return {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
            "nodes": [{"role": "control-plane"}, *workers]}


def worker_names(cluster: str, count: int) -> list[str]:
    """kind's node names: ``<cluster>-worker``, ``<cluster>-worker2``, ... in config order."""
    return [f"{cluster}-worker" + (str(i + 1) if i else "") for i in range(count)]


def gpu_capacity_patches(cluster: str, pools: Sequence[Pool]) -> dict[str, list[dict[str, Any]]]:
    """Node name -> JSON patch adding nvidia.com/gpu to status capacity and allocatable."""
    nodes = [pool for pool in pools for _ in range(pool.count)]
    patches = {}
    for node_name, pool in zip(worker_names(cluster, len(nodes)), nodes):
        if pool.gpu:
            path = names.GPU_RESOURCE.replace("/", "~1")
            value = str(pool.gpu.allocatable)
            patches[node_name] = [{"op": "add", "path": f"/status/capacity/{path}", "value": value},
                                  {"op": "add", "path": f"/status/allocatable/{path}", "value": value}]
    return patches


def docker_works() -> tuple[bool, str]:
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    text = (result.stderr or result.stdout).strip()
    return result.returncode == 0, text.splitlines()[-1] if text else ""


def up(root: Path, name: str, pools: Sequence[Pool], *, log: Log,
       dry_run: bool = False) -> tuple[Kubectl, bool] | None:
    """Create (or reuse) kind cluster ``name``; return its kubectl and whether this call created it."""
    config = yaml.safe_dump(build_kind_config(pools), sort_keys=False)
    config_path = workspace.work_dir(root) / f"{name}.kind.yaml"
    kubeconfig = workspace.kubeconfig_path(root, name)
    # kind publishes node images per Kubernetes patch release; TRTOP_KIND_IMAGE picks another.
    image = os.environ.get("TRTOP_KIND_IMAGE") or f"kindest/node:{read_versions(root)['KUBERNETES_VERSION']}"
    argv = ["create", "cluster", "--name", name, "--config", str(config_path), "--kubeconfig", str(kubeconfig),
            "--image", image, "--wait", "180s"]
    if dry_run:
        print(f"# kind config ({config_path}):\n{config}\n# kind {' '.join(argv)}")
        return None
    ok, why = docker_works()
    if not ok:
        raise KindError(f"--provider kind needs a running Docker engine, and `docker info` fails here ({why}); "
                        "use the default provider (kwok), which needs no Docker")
    tools = ensure_tools(root, with_kind=True)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(config)
    created = name not in _kind(tools, "get", "clusters").split()
    if created:
        log(f"creating kind cluster {name} ({sum(p.count for p in pools)} workers, image {image})")
        _kind(tools, *argv)
    else:
        log(f"kind cluster {name} already exists: re-applying GPU capacity")
    kubectl = Kubectl(tools.kubectl, kubeconfig, tools.helm)
    for node, patch in gpu_capacity_patches(name, pools).items():
        kubectl.run("patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(patch))
    log(f"ready. Use it with:\n\n    export KUBECONFIG={kubeconfig}\n")
    return kubectl, created


def down(root: Path, name: str, *, log: Log) -> None:
    tools = tools_for(read_versions(root), cache_dir())
    log(f"deleting kind cluster {name}")
    _kind(tools, "delete", "cluster", "--name", name, "--kubeconfig", str(workspace.kubeconfig_path(root, name)))


def status(root: Path, name: str, tools: Tools) -> tuple[bool, str]:
    kubeconfig = workspace.kubeconfig_path(root, name)
    running = kubeconfig.is_file() and Kubectl(tools.kubectl, kubeconfig).ready()
    return running, f"cluster {name} (kind): {'running' if running else 'NOT ready'}\n  kubeconfig: {kubeconfig}"


def _kind(tools: Tools, *args: str) -> str:
    result = subprocess.run([str(tools.kind), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KindError(f"`kind {' '.join(args)}` failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout
