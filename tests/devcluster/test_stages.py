"""The kwok stages and kwokctl config shipped as package data agree with trtop.names."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from importlib import resources

import yaml

from trtop import names
from trtop_dev.devcluster import kwok


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(resources.files("trtop_dev.devcluster").joinpath(name).read_text()) if d]


def _stages() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs("stages.yaml")}


def _keys(stage: dict) -> dict[str, tuple[str, list[str]]]:
    return {e["key"]: (e["operator"], e.get("values", [])) for e in stage["spec"]["selector"]["matchExpressions"]}


def test_stages_keep_kwoks_node_and_pod_lifecycle_and_add_ours() -> None:
    assert set(_stages()) == {"node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-complete",
                              "pod-fail", "pod-delete"}


def test_every_pod_stage_skips_pods_carrying_the_skip_label() -> None:
    skip = f'.metadata.labels["{names.LABEL_KWOK_SKIP}"]'
    for name, stage in _stages().items():
        if stage["spec"]["resourceRef"]["kind"] == "Pod":
            assert _keys(stage)[skip] == ("NotIn", ["true"]), name


def test_fail_and_complete_are_mutually_exclusive_on_the_fail_label() -> None:
    fail = f'.metadata.labels["{names.LABEL_KWOK_FAIL}"]'
    assert _keys(_stages()["pod-fail"])[fail] == ("In", ["true"])
    assert _keys(_stages()["pod-complete"])[fail] == ("NotIn", ["true"])
    assert "exitCode: 1" in _stages()["pod-fail"]["spec"]["next"]["statusTemplate"]


def test_completion_delay_reads_the_annotation_with_a_short_default() -> None:
    for name in ("pod-complete", "pod-fail"):
        delay = _stages()[name]["spec"]["delay"]
        assert delay["durationFrom"]["jq"]["expression"] == f'.metadata.annotations["{names.ANNOTATION_KWOK_COMPLETE_AFTER}"]'
        assert delay["durationMilliseconds"] <= 2000


def test_kwok_manages_only_nodes_with_the_fake_annotation() -> None:
    (config,) = _docs("kwokctl.yaml")
    patches = {p["name"]: {a["key"]: a["value"] for a in p["extraArgs"]} for p in config["componentsPatches"]}
    assert patches["kwok-controller"] == {"manage-all-nodes": "false", "manage-nodes-with-annotation-selector": f"{names.KWOK_NODE_ANNOTATION}=fake"}


def test_the_service_range_holds_a_thousand_services() -> None:
    """bench/controlplane.py at N=1000 makes 1000 Services; kube-apiserver's default /24 holds ~250."""
    (config,) = _docs("kwokctl.yaml")
    patches = {p["name"]: {a["key"]: a["value"] for a in p["extraArgs"]} for p in config["componentsPatches"]}
    network = ipaddress.ip_network(patches["kube-apiserver"]["service-cluster-ip-range"])
    assert network.num_addresses >= 4096 and ipaddress.ip_address("10.0.0.1") in network


def test_api_server_presents_the_admin_certificate_to_kubelets() -> None:
    text = (Path(kwok.__file__).parent / "kwokctl.yaml").read_text()
    config = yaml.safe_load(kwok.with_kubelet_access(text, Path("/state/pki")))
    (apiserver,) = [p for p in config["componentsPatches"] if p["name"] == "kube-apiserver"]
    args = {a["key"]: a["value"] for a in apiserver["extraArgs"]}
    assert args["kubelet-client-certificate"] == "/state/pki/admin.crt"
    assert args["kubelet-client-key"] == "/state/pki/admin.key"
    assert args["kubelet-preferred-address-types"] == "InternalIP,Hostname"
    assert args["service-cluster-ip-range"] == "10.0.0.0/16"  # the file's own patches stay
    (kwok_patch,) = [p for p in config["componentsPatches"] if p["name"] == "kwok-controller"]
    assert kwok_patch == yaml.safe_load(text)["componentsPatches"][0]
