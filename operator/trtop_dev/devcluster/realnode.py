"""The dev cluster's one real node: a kubelet on this machine's containerd, runc and CNI bridge.

It runs real containers from images built here (hack/build-images.sh) beside the kwok GPU
pools; it is tainted ``trtop.io/real-node=true:NoSchedule`` so only pods that tolerate it
land there. There is one per machine (the kubelet owns host cgroups, iptables and sysctls):
the first cluster to come up claims it (``/run/trtop/realnode.json``), others run without
it and say why. kube-proxy routes Services (ClusterIPs) for the host and the node's pods.
``stop`` kills the kubelet, kube-proxy and the pods, then removes the mounts, cgroups,
iptables chains and CNI bridge it made and puts the sysctls back.
Called by ``trtop_dev.devcluster.cluster`` (``up``/``down``) and the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from trtop_dev.devcluster import diskspace, hostcleanup, nodeconfig, workspace
from trtop_dev.devcluster.containerd import RUN_DIR, Containerd, ContainerdError, for_checkout, spawn_detached, terminate
from trtop_dev.devcluster.kubectl import Kubectl
from trtop_dev.devcluster.kwok import process_running
from trtop_dev.devcluster.tools import NodeTools, cache_dir, ensure_node_tools, node_tools_for, read_versions

Log = Callable[[str], None]
CLAIM = RUN_DIR / "realnode.json"
HOLDER = "realnode"
CGROUP = nodeconfig.CGROUP_ROOT.strip("/")
# Free disk the node needs above the kubelet's eviction threshold: pod logs, emptyDirs, the
# engines the converter Jobs write and the images' writable layers.
NODE_NEEDS_BYTES = 2 * diskspace.GiB


class RealNodeError(RuntimeError):
    """The real node did not start; the message points at its log."""


@dataclass(frozen=True)
class RealNode:
    """The real node of dev cluster ``name`` in checkout ``root``."""

    root: Path
    name: str

    @property
    def node_dir(self) -> Path:
        """Kubelet root, pod logs, config and logs: ``.work/dev-cluster/<name>.node``."""
        return workspace.work_dir(self.root) / f"{self.name}.node"

    @property
    def kubelet_log(self) -> Path:
        return self.node_dir / "kubelet.log"

    def containerd(self) -> Containerd:
        return for_checkout(self.root)

    def owner(self) -> dict[str, str] | None:
        """The claim on this machine's node: {cluster, repo, node_dir}, or None."""
        try:
            claim: dict[str, str] = json.loads(CLAIM.read_text())
        except (OSError, ValueError):
            return None
        return claim

    def is_ours(self) -> bool:
        claim = self.owner()
        return claim is not None and claim.get("node_dir") == str(self.node_dir)

    def kubelet_pid(self) -> int | None:
        return self._pid("kubelet")

    def _pid(self, process: str) -> int | None:
        try:
            pid = int((self.node_dir / f"{process}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if process_running(pid) else None

    def why_not(self) -> str | None:
        """Why this machine cannot run the node now (None: it can)."""
        if os.geteuid() != 0:
            return "it needs root (the kubelet manages cgroups, mounts and iptables)"
        if not (hostcleanup.CGROUP_FS / "cgroup.controllers").is_file() and not (hostcleanup.CGROUP_FS / "memory").is_dir():
            return f"no cgroup hierarchy at {hostcleanup.CGROUP_FS}"
        if "overlay" not in Path("/proc/filesystems").read_text() and not _modprobe("overlay"):
            return "the kernel has no overlay filesystem (containerd's snapshotter)"
        for tool in ("iptables", "iptables-save", "iptables-restore", "ip"):
            if shutil.which(tool) is None:
                return f"`{tool}` is missing (Debian: apt-get install iptables iproute2)"
        missing = node_tools_for(read_versions(self.root), cache_dir()).missing()
        if missing:
            for tool, why in (("go", "Go"), ("gcc", "gcc (the pause binary, runc's cgo)")):
                if shutil.which(tool) is None:
                    return f"its binaries are not built and building them needs {why}"
            if shutil.which("pkg-config") is None or subprocess.run(
                    ["pkg-config", "--exists", "libseccomp"], capture_output=True).returncode != 0:
                return "its binaries are not built and runc's seccomp needs libseccomp-dev (and pkg-config)"
        claim = self.owner()
        if claim and claim.get("node_dir") != str(self.node_dir) and _claim_alive(claim):
            return (f"this machine's real node belongs to cluster {claim.get('cluster')} of {claim.get('repo')} "
                    "(one per machine: the kubelet owns host cgroups, iptables and sysctls)")
        if not self.is_ours():
            for port in (nodeconfig.KUBELET_PORT, nodeconfig.KUBELET_HEALTHZ_PORT):
                if _port_busy(port):
                    return f"port {port} (the kubelet's) is in use by another process"
        return None

    def start(self, kubeconfig: Path, kubectl: Kubectl, log: Log) -> None:
        """Build what is missing, start containerd and the kubelet, wait until the node is Ready."""
        if self.kubelet_pid() is not None:
            log(f"real node {nodeconfig.NODE_NAME} is running (kubelet pid {self.kubelet_pid()})")
            return
        tools = ensure_node_tools(self.root)
        short = diskspace.shortfall(diskspace.usage(self.node_dir), need=NODE_NEEDS_BYTES,
                                    reserve_percent=nodeconfig.EVICTION_FREE_PERCENT, purpose="The real node")
        if short:
            raise RealNodeError(short)
        stale = self.owner()
        if stale and not _claim_alive(stale):
            log(f"cleaning up after a real node that did not stop ({stale.get('node_dir')})")
            _cleanup(Path(stale["node_dir"]), self.containerd(), log)
        self.node_dir.mkdir(parents=True, exist_ok=True)
        CLAIM.parent.mkdir(parents=True, exist_ok=True)
        CLAIM.write_text(json.dumps({"cluster": self.name, "repo": str(self.root), "node_dir": str(self.node_dir)}))
        saved = self.node_dir / "sysctls.json"
        if not saved.is_file():
            saved.write_text(json.dumps(hostcleanup.read_sysctls(nodeconfig.SYSCTLS)))
        daemon = self.containerd()
        # Held under our own pid until the kubelet runs, then under the kubelet's.
        daemon.acquire(HOLDER, os.getpid(), log)
        hostcleanup.make_cgroups(CGROUP)
        cni = daemon.layout.cni_conf_dir / "10-trtop.conflist"
        cni.write_text(nodeconfig.cni_config_text(RUN_DIR / "cni" / "ipam"))
        self._start_kubelet(tools, daemon, kubeconfig, log)
        (daemon.holders_dir / HOLDER).write_text(str(self.kubelet_pid()))
        self._start_kube_proxy(tools, kubeconfig, log)
        self._wait_ready(kubectl, log)

    def stop(self, log: Log) -> None:
        """Stop the kubelet and its pods; undo what they changed on the host."""
        if not self.is_ours():
            # The machine's node is another cluster's now (it took over after ours died): the
            # host-wide state is its own, so only our folder goes.
            if self.node_dir.exists():
                hostcleanup.unmount_all([self.node_dir])
                shutil.rmtree(self.node_dir, ignore_errors=True)
            return
        for process in ("kube-proxy", "kubelet"):
            pid = self._pid(process)
            if pid is not None:
                log(f"stopping {process} (pid {pid})")
                terminate(pid)
        _cleanup(self.node_dir, self.containerd(), log)

    def _start_kubelet(self, tools: NodeTools, daemon: Containerd, kubeconfig: Path, log: Log) -> None:
        config = self.node_dir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(nodeconfig.render_kubelet_config(
            socket=daemon.layout.socket, pod_logs_dir=self.node_dir / "pods", resolv_conf=_resolv_conf(),
            client_ca=_client_ca(kubeconfig))))
        argv = [str(tools.kubelet), *nodeconfig.render_kubelet_args(
            config=config, kubeconfig=kubeconfig, root_dir=self.node_dir / "kubelet")]
        log(f"starting the kubelet of node {nodeconfig.NODE_NAME} (log: {self.kubelet_log})")
        self._spawn("kubelet", argv)

    def _start_kube_proxy(self, tools: NodeTools, kubeconfig: Path, log: Log) -> None:
        config = self.node_dir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(nodeconfig.render_kube_proxy_config(kubeconfig=kubeconfig)))
        log(f"starting kube-proxy (Services from this host and its pods; log: {self.node_dir / 'kube-proxy.log'})")
        self._spawn("kube-proxy", [str(tools.kube_proxy), f"--config={config}"])

    def _spawn(self, process: str, argv: list[str]) -> None:
        # iptables for the kubelet's canary chains and kube-proxy's rules, from PATH.
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(argv[0]).parent), os.environ.get("PATH", "")])}
        proc = spawn_detached(argv, env, self.node_dir / f"{process}.log")
        (self.node_dir / f"{process}.pid").write_text(str(proc.pid))

    def _wait_ready(self, kubectl: Kubectl, log: Log, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kubelet_pid() is None:
                break
            node = kubectl.json("get", "nodes", "--ignore-not-found", "-o", "json")
            for item in node.get("items", []):
                if item["metadata"]["name"] == nodeconfig.NODE_NAME and any(
                        c["type"] == "Ready" and c["status"] == "True" for c in item.get("status", {}).get("conditions", [])):
                    log(f"real node {nodeconfig.NODE_NAME} Ready")
                    return
            time.sleep(0.5)
        tail = "\n".join(self.kubelet_log.read_text().splitlines()[-20:])
        raise RealNodeError(f"node {nodeconfig.NODE_NAME} did not become Ready in {timeout:.0f}s; last lines of "
                            f"{self.kubelet_log}:\n{tail}")


def _cleanup(node_dir: Path, daemon: Containerd, log: Log) -> None:
    """Everything the node made, from the pods' processes to the claim, whatever state it is in."""
    killed = hostcleanup.kill_cgroup_processes(CGROUP)
    if killed:
        log(f"killed {killed} container processes")
    if daemon.pid() is not None:
        _remove_cri_containers(daemon, log)
    stopped = daemon.release(HOLDER, log)
    mounts = [node_dir]
    if stopped:  # a build still using containerd keeps its mounts
        mounts.append(daemon.layout.state)
        _kill_leftover_shims(daemon)
    unmounted = hostcleanup.unmount_all(mounts)
    if unmounted:
        log(f"unmounted {len(unmounted)} mounts")
    left = hostcleanup.remove_cgroups(CGROUP)
    if left:
        log(f"warning: cgroups still in use: {', '.join(map(str, left))}")
    if hostcleanup.delete_link(nodeconfig.BRIDGE):
        log(f"removed the bridge {nodeconfig.BRIDGE}")
    dropped = hostcleanup.remove_owned_iptables_rules()
    if dropped:
        log(f"removed {dropped} iptables chains and rules (KUBE-*, CNI-*)")
    restored = hostcleanup.restore_sysctls(node_dir / "sysctls.json")
    if restored:
        log("restored sysctls: " + ", ".join(f"{k}={v}" for k, v in restored.items()))
    shutil.rmtree(RUN_DIR / "cni" / "ipam", ignore_errors=True)
    shutil.rmtree(node_dir, ignore_errors=True)
    claim = CLAIM.read_text() if CLAIM.is_file() else ""
    if str(node_dir) in claim:
        CLAIM.unlink(missing_ok=True)


def _remove_cri_containers(daemon: Containerd, log: Log) -> None:
    """Delete the kubelet's containers and sandboxes (CRI-made: they carry io.cri-containerd.kind)."""
    try:
        ids = daemon.ctr("containers", "ls", "-q", 'labels."io.cri-containerd.kind"', timeout=30).split()
        for cid in ids:
            daemon.ctr("tasks", "delete", "-f", cid, check=False, timeout=30)
        if ids:
            daemon.ctr("containers", "delete", *ids, check=False, timeout=60)
            log(f"removed {len(ids)} pod containers from containerd")
    except (ContainerdError, subprocess.TimeoutExpired) as err:
        log(f"warning: could not list the pods' containers: {err}")


def _kill_leftover_shims(daemon: Containerd) -> None:
    """Shims of our containerd whose containers were killed but never deleted (found by binary path)."""
    shim = str(daemon.tools.shim)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "exe") == shim:
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            pass


def _claim_alive(claim: dict[str, str]) -> bool:
    try:
        pid = int((Path(claim["node_dir"]) / "kubelet.pid").read_text())
    except (OSError, ValueError, KeyError):
        return False
    return process_running(pid)


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))  # the kubelet's API listens on every address
        except OSError:
            return True
    return False


def _modprobe(module: str) -> bool:
    return shutil.which("modprobe") is not None and subprocess.run(["modprobe", module], capture_output=True).returncode == 0


def _client_ca(kubeconfig: Path) -> Path:
    """The cluster CA's file, from the kubeconfig kwokctl wrote (its certificate-authority path)."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:
        return Path(cluster["certificate-authority"])
    raise RealNodeError(f"{kubeconfig} names no certificate-authority file; the kubelet needs the cluster CA")


def _resolv_conf() -> Path:
    """systemd-resolved's upstream list when the host points at its 127.0.0.53 stub."""
    upstream = Path("/run/systemd/resolve/resolv.conf")
    stub = Path("/etc/resolv.conf")
    if upstream.is_file() and "127.0.0.53" in stub.read_text():
        return upstream
    return stub
