"""Up, down and status of the dev cluster, whichever provider runs it (kwok here, kind with Docker).

``up`` is idempotent: on a running cluster it only re-applies the nodes of the pools file.
Called by ``trtop_dev.devcluster.cli`` and the pytest fixtures in ``trtop_dev.devcluster.testing``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtop_dev.devcluster import kind, workspace
from trtop_dev.devcluster.kubectl import Kubectl
from trtop_dev.devcluster.kwok import KwokCluster
from trtop_dev.devcluster.nodes import NodesResult, apply_pools, describe_nodes
from trtop_dev.devcluster.pools import read_pools
from trtop_dev.devcluster.realnode import RealNode
from trtop_dev.devcluster.tools import Tools, ensure_tools, read_versions, cache_dir, tools_for

Log = Callable[[str], None]
PROVIDERS = ("kwok", "kind")


@dataclass(frozen=True)
class ClusterInfo:
    """What ``up`` gives back: where the cluster is and whether this call started it."""

    name: str
    provider: str
    kubeconfig: Path
    created: bool
    kubectl: Kubectl


def progress_log(prefix: str = "dev-cluster") -> Log:
    """A logger printing ``[dev-cluster  3.2s] message`` lines (seconds since it was made)."""
    start = time.monotonic()

    def log(message: str) -> None:
        print(f"[{prefix} {time.monotonic() - start:5.1f}s] {message}", flush=True)

    return log


def up(name: str = workspace.DEFAULT_NAME, *, pools_file: Path | None = None, provider: str = "kwok",
       dry_run: bool = False, real_node: bool = True, log: Log | None = None) -> ClusterInfo | None:
    """Build/find the binaries, start the cluster unless it runs, apply the pools' nodes.

    With ``real_node`` (kwok provider), also start this machine's real node
    (``trtop_dev.devcluster.realnode``) when it can run here; otherwise say why and go on.
    """
    log = log or progress_log()
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    root = workspace.repo_root()
    pools = read_pools(pools_file)  # a broken pools file fails before anything starts
    if provider == "kind":
        made = kind.up(root, name, pools, log=log, dry_run=dry_run)
        if made is None:
            return None
        _remember_provider(root, name, "kind")
        return ClusterInfo(name, "kind", made[0].kubeconfig, made[1], made[0])
    if dry_run:
        tools = tools_for(read_versions(root), cache_dir())
        if tools.missing():
            print(f"# would run hack/build-tools.sh first (missing: {', '.join(p.name for p in tools.missing())})")
        KwokCluster(root, name, tools).create(log, dry_run=True)
        print(f"# then apply {sum(p.count for p in pools)} nodes from {pools_file or 'the default pools'}")
        if real_node:
            reason = RealNode(root, name).why_not()
            print(f"# then start the real node (kubelet + containerd): {'no, ' + reason if reason else 'yes'}")
        return None
    log("checking the tool cache (hack/build-tools.sh)")
    tools = ensure_tools(root)
    cluster = KwokCluster(root, name, tools)
    _remember_provider(root, name, "kwok")
    kubectl = cluster.kubectl()
    created = False
    if cluster.exists() and cluster.kubeconfig.is_file() and kubectl.ready():
        log(f"cluster {name} is already running: re-applying nodes")
    elif cluster.exists():
        cluster.start(log)
    else:
        cluster.create(log)
        created = True
    _wait_ready(kubectl, log)
    log(f"applying {sum(p.count for p in pools)} nodes from {pools_file or 'the default pools'}")
    result = apply_pools(kubectl, pools)
    _wait_nodes(kubectl, [n for p in pools for n in p.node_names()], log)
    _report(result, log)
    install_crds(kubectl, root, log)
    if real_node:
        _start_real_node(RealNode(root, name), cluster.kubeconfig, kubectl, log)
    else:
        log("no real node (--no-real-node): only the kwok nodes run pods")
    log(f"ready. Use it with:\n\n    export KUBECONFIG={cluster.kubeconfig}\n")
    return ClusterInfo(name, "kwok", cluster.kubeconfig, created, kubectl)


def down(name: str = workspace.DEFAULT_NAME, *, log: Log | None = None) -> list[int]:
    """Stop the cluster and delete its state (caches stay); return pids killed by force."""
    log = log or progress_log()
    root = workspace.repo_root()
    if _provider_of(root, name) == "kind":
        kind.down(root, name, log=log)
        forced: list[int] = []
    else:
        cluster = KwokCluster(root, name, tools_for(read_versions(root), cache_dir()))
        RealNode(root, name).stop(log)  # before the API server goes: nothing then restarts pods
        if not cluster.exists() and not cluster.pids():
            log(f"no cluster named {name}: nothing to do")
        forced = cluster.delete(log)
        if forced:
            log(f"warning: killed {len(forced)} processes that did not stop: {forced}")
    (workspace.work_dir(root) / f"{name}.provider").unlink(missing_ok=True)
    log(f"cluster {name} is down")
    return forced


def exists(name: str = workspace.DEFAULT_NAME) -> bool:
    """Whether cluster ``name`` has state on this machine (running or not)."""
    root = workspace.repo_root()
    if _provider_of(root, name) == "kind":
        return kind.status(root, name, tools_for(read_versions(root), cache_dir()))[0]
    return KwokCluster(root, name, tools_for(read_versions(root), cache_dir())).exists()


def status(name: str = workspace.DEFAULT_NAME) -> tuple[bool, str]:
    """(running, a report a person can read)."""
    root = workspace.repo_root()
    tools = tools_for(read_versions(root), cache_dir())
    if _provider_of(root, name) == "kind":
        return kind.status(root, name, tools)
    cluster = KwokCluster(root, name, tools)
    if not cluster.exists():
        return False, f"cluster {name}: not created (start it with `trtop dev cluster up`)"
    pids = cluster.pids()
    kubectl = cluster.kubectl()
    ready = bool(pids) and cluster.kubeconfig.is_file() and kubectl.ready()
    lines = [f"cluster {name} (kwok, binary runtime): {'running' if ready else 'NOT ready'}",
             f"  kubeconfig: {cluster.kubeconfig}", f"  state:      {cluster.state_dir}",
             "  processes:  " + ", ".join(f"{c}={pids[c]}" if c in pids else f"{c}=stopped"
                                         for c in ("etcd", "kube-apiserver", "kube-controller-manager",
                                                   "kube-scheduler", "kwok-controller"))]
    node = RealNode(root, name)
    lines.append(f"  real node:  {_describe_real_node(node)}")
    if ready:
        lines += ["  nodes:", *("    " + line for line in describe_nodes(kubectl)),
                  f"  export KUBECONFIG={cluster.kubeconfig}"]
    return ready, "\n".join(lines)


def apply_nodes(name: str = workspace.DEFAULT_NAME, *, pools_file: Path | None = None, prune: bool = True,
                log: Log | None = None) -> NodesResult:
    """Apply a pools file to the running cluster ``name`` (add/remove GPU types at run time)."""
    log = log or progress_log()
    root = workspace.repo_root()
    kubeconfig = workspace.kubeconfig_path(root, name)
    if not kubeconfig.is_file():
        raise RuntimeError(f"cluster {name} is not running ({kubeconfig} is missing); run `trtop dev cluster up`")
    tools = ensure_tools(root, build=False)
    kubectl = Kubectl(tools.kubectl, kubeconfig, tools.helm)
    pools = read_pools(pools_file)
    result = apply_pools(kubectl, pools, prune=prune)
    _wait_nodes(kubectl, [n for p in pools for n in p.node_names()], log)
    _report(result, log)
    return result


def install_crds(kubectl: Kubectl, root: Path, log: Log, timeout: float = 60) -> list[str]:
    """Apply the checkout's CRDs (crds/*.yaml) and wait until the API serves them."""
    files = sorted((root / "crds").glob("*.yaml"))
    if not files:
        return []
    args = [arg for f in files for arg in ("-f", str(f))]
    out = kubectl.run("apply", "--server-side", "--force-conflicts", "--field-manager", "trtop-dev", *args, "-o", "name")
    crds = out.split()
    kubectl.run("wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *crds, timeout=timeout + 10)
    log(f"CRDs installed: {', '.join(c.split('/', 1)[-1] for c in crds)}")
    return crds


def _start_real_node(node: RealNode, kubeconfig: Path, kubectl: Kubectl, log: Log) -> None:
    reason = node.why_not()
    if reason:
        log(f"no real node: {reason}; only the kwok nodes run pods (pass --no-real-node to skip this check)")
        return
    node.start(kubeconfig, kubectl, log)


def _describe_real_node(node: RealNode) -> str:
    pid = node.kubelet_pid()
    if pid is not None:
        return f"running (kubelet pid {pid}, log {node.kubelet_log})"
    owner = node.owner()
    if owner and not node.is_ours():
        return f"none (this machine's belongs to cluster {owner.get('cluster')} of {owner.get('repo')})"
    return "not running"


def _wait_ready(kubectl: Kubectl, log: Log, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not kubectl.ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API server did not become ready in {timeout:.0f}s; see `trtop dev cluster status`")
        time.sleep(0.5)
    log("API server ready")


def _wait_nodes(kubectl: Kubectl, node_names: list[str], log: Log, timeout: float = 60) -> None:
    if node_names:
        kubectl.run("wait", "--for=condition=Ready", f"--timeout={int(timeout)}s",
                    *(f"node/{n}" for n in node_names), timeout=timeout + 10)
        log(f"{len(node_names)} nodes Ready")


def _report(result: NodesResult, log: Log) -> None:
    log(f"nodes: {', '.join(result.applied) or 'none'}" + (f"; removed {', '.join(result.removed)}" if result.removed else ""))


def _remember_provider(root: Path, name: str, provider: str) -> None:
    path = workspace.work_dir(root) / f"{name}.provider"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(provider + "\n")


def _provider_of(root: Path, name: str) -> str:
    path = workspace.work_dir(root) / f"{name}.provider"
    return path.read_text().strip() if path.is_file() else "kwok"


__all__ = ["ClusterInfo", "Tools", "apply_nodes", "down", "install_crds", "progress_log", "status", "up"]
