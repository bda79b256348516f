"""The real node's configuration files, rendered from plain values (pure functions).

containerd's ``config.toml`` (version 3), the CNI network list and the kubelet's
``KubeletConfiguration``. ``trtop_dev.devcluster.realnode`` writes them and starts the
processes; ``trtop_dev.devcluster.containerd`` starts containerd for image builds too, with
the same file, so the node and a build can share one running containerd.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtop import names

NODE_NAME = "real-0"
# Pods land on the real node only when they ask for it: the kwok pools' pods (which use
# images this machine may not have) keep going to the fake nodes.
TAINT = {"key": names.LABEL_REAL_NODE, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": names.LABEL_REAL_NODE, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
BRIDGE = "trtop0"
CNI_NETWORK = "trtop"
POD_SUBNET = "10.89.0.0/16"
CGROUP_ROOT = "/trtop"
# Healthz and kube-proxy's endpoints listen on loopback only; the kubelet's API listens on
# every address (the API server reaches it at the node's IP) and takes only clients of the
# cluster's CA (the API server presents kwokctl's admin certificate).
KUBELET_ADDRESS = "127.0.0.1"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
# The sysctls the kubelet sets on start (protectKernelDefaults: false) and the CNI bridge
# plugin turns on: saved before the node starts and put back by `down`.
# The kubelet evicts pods (and admits none: DiskPressure) below this much free disk.
# The dev machine's disk is shared with builds: evict only when it is really short.
EVICTION_FREE_PERCENT = 2
SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "net.ipv4.ip_forward")


@dataclass(frozen=True)
class ContainerdLayout:
    """Where containerd keeps images (persistent, in the tool cache) and its run state."""

    root: Path       # content + snapshots: survives `down`, so images stay built
    state: Path      # sockets, task bundles, rootfs and netns mounts (/run/trtop/containerd)
    cni_conf_dir: Path
    cni_bin_dir: Path
    runc: Path
    pause_image: str

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"


def render_containerd_config(layout: ContainerdLayout) -> str:
    """containerd 2.x ``config.toml`` (version 3) for a root without CAP_SYS_RESOURCE, cgroupfs."""
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    images = "plugins.'io.containerd.cri.v1.images'"
    return "\n".join([
        "# Written by trtop_dev.devcluster (nodeconfig.render_containerd_config); do not edit.",
        "version = 3",
        f"root = {_q(layout.root)}",
        f"state = {_q(layout.state)}",
        "",
        "[grpc]",
        f"  address = {_q(layout.socket)}",
        "",
        "[ttrpc]",
        f"  address = {_q(layout.state / 'containerd.sock.ttrpc')}",
        "",
        f"[{images}]",
        "  snapshotter = 'overlayfs'",
        "",
        # The sandbox (pause) image is built here and imported; never pulled.
        f"[{images}.pinned_images]",
        f"  sandbox = {_q(layout.pause_image)}",
        "",
        f"[{runtime}]",
        # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
        # "failed to update /proc/self/oom_score_adj: Permission denied".
        "  restrict_oom_score_adj = true",
        # netns bind mounts under our state dir, so `down` finds and unmounts them all.
        "  netns_mounts_under_state_dir = true",
        "  enable_selinux = false",
        "",
        f"[{runtime}.containerd]",
        "  default_runtime_name = 'runc'",
        "",
        f"[{runtime}.containerd.runtimes.runc]",
        "  runtime_type = 'io.containerd.runc.v2'",
        "",
        f"[{runtime}.containerd.runtimes.runc.options]",
        f"  BinaryName = {_q(layout.runc)}",
        # The kubelet uses cgroupDriver cgroupfs (no systemd here): both must agree.
        "  SystemdCgroup = false",
        "",
        f"[{runtime}.cni]",
        f"  bin_dirs = [{_q(layout.cni_bin_dir)}]",
        f"  conf_dir = {_q(layout.cni_conf_dir)}",
        "  max_conf_num = 1",
        "",
        "[plugins.'io.containerd.grpc.v1.cri']",
        "  disable_tcp_service = true",
        "  stream_server_address = '127.0.0.1'",
        "  stream_server_port = '0'",
        "",
    ])


def render_cni_config(ipam_data_dir: Path, *, subnet: str = POD_SUBNET, bridge: str = BRIDGE) -> dict[str, Any]:
    """The CNI network list: a bridge with NAT out, host-local addresses, host ports."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    # Under the run dir, so `down` drops the address leases with it.
                    "dataDir": str(ipam_data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def render_kubelet_config(*, socket: Path, pod_logs_dir: Path, resolv_conf: Path, client_ca: Path) -> dict[str, Any]:
    """KubeletConfiguration for a cgroup v1 or v2 host driven by cgroupfs, swap allowed."""
    endpoint = f"unix://{socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "cgroupDriver": "cgroupfs",
        # Every pod cgroup below one root of ours: `down` removes exactly that tree.
        "cgroupRoot": CGROUP_ROOT,
        "failCgroupV1": False,
        "failSwapOn": False,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": KUBELET_ADDRESS,
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        # Each request is checked with the API server (SubjectAccessReview), as on a real cluster.
        "authorization": {"mode": "Webhook"},
        "registerWithTaints": [TAINT],
        "podLogsDir": str(pod_logs_dir),
        "resolvConf": str(resolv_conf),
        "serializeImagePulls": False,
        # Never garbage-collect the images built here (they cannot be pulled back).
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": f"{EVICTION_FREE_PERCENT}%",
                         "imagefs.available": f"{EVICTION_FREE_PERCENT}%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "rotateCertificates": False,
    }


def render_kubelet_args(*, config: Path, kubeconfig: Path, root_dir: Path, node_name: str = NODE_NAME) -> list[str]:
    """The kubelet's flags (what KubeletConfiguration cannot say)."""
    return [
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={root_dir}",
        f"--hostname-override={node_name}",
        f"--node-labels={names.LABEL_REAL_NODE}=true",
    ]


def render_kube_proxy_config(*, kubeconfig: Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode, Services routed from this host and its pods.

    It leaves the host's conntrack sysctls and route_localnet alone (the values that make
    it write them are zeroed), so `down` has nothing more to put back than the node's.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"{KUBELET_ADDRESS}:10256",
        "metricsBindAddress": f"{KUBELET_ADDRESS}:10249",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }


def cni_config_text(ipam_data_dir: Path) -> str:
    return json.dumps(render_cni_config(ipam_data_dir), indent=2) + "\n"


def _q(value: object) -> str:
    """A TOML literal string (paths and image names hold no single quote)."""
    text = str(value)
    if "'" in text or "\n" in text:
        raise ValueError(f"cannot write {text!r} as a TOML literal string")
    return f"'{text}'"
