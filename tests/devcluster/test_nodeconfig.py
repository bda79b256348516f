"""The real node's config files: what containerd, the CNI plugins and the kubelet are told."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from trtop import names
from trtop_dev.devcluster import nodeconfig
from trtop_dev.devcluster.nodeconfig import ContainerdLayout

LAYOUT = ContainerdLayout(root=Path("/cache/containerd"), state=Path("/run/trtop/containerd"),
                          cni_conf_dir=Path("/run/trtop/cni/net.d"), cni_bin_dir=Path("/cache/bin/cni-v1.10.0"),
                          runc=Path("/cache/bin/runc-v1.5.3/runc"), pause_image="localhost/trtop/pause:v1.36.3")


def _containerd() -> dict:
    return tomllib.loads(nodeconfig.render_containerd_config(LAYOUT))


def test_containerd_config_is_version_3_with_our_paths() -> None:
    config = _containerd()
    assert config["version"] == 3
    assert config["root"] == "/cache/containerd" and config["state"] == "/run/trtop/containerd"
    assert config["grpc"]["address"] == "/run/trtop/containerd/containerd.sock" == str(LAYOUT.socket)


def test_containerd_runs_runc_with_cgroupfs_and_never_raises_oom_score() -> None:
    runtime = _containerd()["plugins"]["io.containerd.cri.v1.runtime"]
    # Without it every sandbox fails where root lacks CAP_SYS_RESOURCE.
    assert runtime["restrict_oom_score_adj"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"BinaryName": "/cache/bin/runc-v1.5.3/runc", "SystemdCgroup": False}
    assert runtime["cni"]["bin_dirs"] == ["/cache/bin/cni-v1.10.0"]
    assert runtime["netns_mounts_under_state_dir"] is True


def test_containerd_uses_the_local_pause_image_and_overlayfs() -> None:
    images = _containerd()["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"] == {"sandbox": "localhost/trtop/pause:v1.36.3"}
    assert images["snapshotter"] == "overlayfs"


def test_a_path_that_toml_cannot_quote_is_refused() -> None:
    bad = ContainerdLayout(**{**LAYOUT.__dict__, "root": Path("/it's")})
    with pytest.raises(ValueError, match="TOML"):
        nodeconfig.render_containerd_config(bad)


def test_cni_bridge_nats_out_and_keeps_leases_in_the_run_dir() -> None:
    config = json.loads(nodeconfig.cni_config_text(Path("/run/trtop/cni/ipam")))
    bridge, portmap = config["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == nodeconfig.BRIDGE and bridge["ipMasq"] is True
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["dataDir"] == "/run/trtop/cni/ipam"
    assert bridge["ipam"]["ranges"] == [[{"subnet": nodeconfig.POD_SUBNET}]]
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_kubelet_uses_cgroupfs_our_root_and_tolerates_cgroup_v1_and_swap() -> None:
    config = nodeconfig.render_kubelet_config(socket=Path("/run/c.sock"), pod_logs_dir=Path("/n/pods"),
                                              resolv_conf=Path("/etc/resolv.conf"), client_ca=Path("/pki/ca.crt"))
    assert config["kind"] == "KubeletConfiguration"
    assert config["containerRuntimeEndpoint"] == config["imageServiceEndpoint"] == "unix:///run/c.sock"
    assert (config["cgroupDriver"], config["cgroupRoot"]) == ("cgroupfs", "/trtop")
    assert config["failCgroupV1"] is False and config["failSwapOn"] is False
    assert config["healthzBindAddress"] == "127.0.0.1" and config["readOnlyPort"] == 0
    assert config["registerWithTaints"] == [{"key": names.LABEL_REAL_NODE, "value": "true", "effect": "NoSchedule"}]
    assert config["podLogsDir"] == "/n/pods"


def test_toleration_matches_the_taint() -> None:
    taint, toleration = nodeconfig.TAINT, nodeconfig.TOLERATION
    assert (toleration["key"], toleration["value"], toleration["effect"]) == (taint["key"], taint["value"], taint["effect"])


def test_kubelet_flags_name_the_node_and_label_it() -> None:
    args = nodeconfig.render_kubelet_args(config=Path("/n/k.yaml"), kubeconfig=Path("/kc"), root_dir=Path("/n/kubelet"))
    assert "--config=/n/k.yaml" in args and "--kubeconfig=/kc" in args and "--root-dir=/n/kubelet" in args
    assert f"--hostname-override={nodeconfig.NODE_NAME}" in args
    assert f"--node-labels={names.LABEL_REAL_NODE}=true" in args


def test_kube_proxy_routes_services_with_iptables_and_leaves_conntrack_alone() -> None:
    config = nodeconfig.render_kube_proxy_config(kubeconfig=Path("/kc"))
    assert config["kind"] == "KubeProxyConfiguration" and config["mode"] == "iptables"
    assert config["hostnameOverride"] == nodeconfig.NODE_NAME and config["clusterCIDR"] == nodeconfig.POD_SUBNET
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["tcpEstablishedTimeout"] == "0s"
    assert config["iptables"]["localhostNodePorts"] is False  # no route_localnet sysctl


def test_kubelet_api_takes_only_clients_of_the_cluster_ca_checked_by_the_api_server() -> None:
    config = nodeconfig.render_kubelet_config(socket=Path("/run/c.sock"), pod_logs_dir=Path("/n/pods"),
                                              resolv_conf=Path("/etc/resolv.conf"), client_ca=Path("/pki/ca.crt"))
    assert config["authentication"] == {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                                        "x509": {"clientCAFile": "/pki/ca.crt"}}
    assert config["authorization"] == {"mode": "Webhook"}
