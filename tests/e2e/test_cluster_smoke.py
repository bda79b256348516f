"""The dev cluster is a real Kubernetes: scheduling on GPU capacity, Jobs, kubectl and helm.

Runs against the session cluster of tests/conftest.py (kwok nodes from the default pools).
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from trtop import names
from trtop_dev.devcluster.pools import Gpu, Pool, read_pools
from trtop_dev.devcluster.testing import DevCluster, wait_for

pytestmark = pytest.mark.e2e


def _deployment(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "main", "image": "registry.example/none:1",
                "resources": {"limits": {names.GPU_RESOURCE: str(gpus)}}}]}},
        },
    }


def _job(name: str, *, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": labels or {}, "annotations": annotations or {}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "registry.example/none:1"}]}}},
    }


def _pods(dev_cluster: DevCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = dev_cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    return items


def _nodes(dev_cluster: DevCluster) -> dict[str, dict[str, Any]]:
    return {n["metadata"]["name"]: n for n in dev_cluster.get("nodes")["items"]}


def _job_condition(dev_cluster: DevCluster, namespace: str, name: str) -> str | None:
    job = dev_cluster.get("job", name, "-n", namespace)
    done = [c["type"] for c in job.get("status", {}).get("conditions", [])
            if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
    return done[0] if done else None


def test_default_pools_carry_gfd_labels_and_gpu_capacity(dev_cluster: DevCluster) -> None:
    nodes = _nodes(dev_cluster)
    by_product: dict[str, list[dict[str, Any]]] = {}
    for node in nodes.values():
        by_product.setdefault(node["metadata"]["labels"].get(names.GFD_PRODUCT, "cpu"), []).append(node)
    assert len(by_product["NVIDIA-H100-80GB-HBM3"]) >= 2
    assert len(by_product["NVIDIA-A100-SXM4-80GB"]) >= 2
    assert len(by_product["NVIDIA-L4"]) >= 1
    assert len(by_product["cpu"]) >= 2
    h100 = by_product["NVIDIA-H100-80GB-HBM3"][0]
    labels = h100["metadata"]["labels"]
    assert (labels[names.GFD_CC_MAJOR], labels[names.GFD_CC_MINOR], labels[names.GFD_FAMILY]) == ("9", "0", "hopper")
    assert h100["status"]["allocatable"][names.GPU_RESOURCE] == "8"
    assert h100["metadata"]["annotations"][names.KWOK_NODE_ANNOTATION] == "fake"
    assert all(c["status"] == "True" for n in nodes.values() for c in n["status"]["conditions"] if c["type"] == "Ready")


def test_gpu_deployment_lands_only_on_gpu_nodes_and_becomes_ready(dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.apply(_deployment("gpu", replicas=4, gpus=1), namespace=namespace)
    dev_cluster.kubectl("rollout", "status", "deployment/gpu", "-n", namespace, "--timeout=60s")
    pods = _pods(dev_cluster, namespace, "app=gpu")
    nodes = _nodes(dev_cluster)
    assert len(pods) == 4
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert names.GFD_PRODUCT in node["metadata"]["labels"], f"{pod['metadata']['name']} on CPU node {node['metadata']['name']}"
        assert pod["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"


def test_scheduler_counts_gpus_a_pod_needing_more_than_any_free_node_stays_pending(
        dev_cluster: DevCluster, namespace: str) -> None:
    eight_gpu_nodes = [n for n in _nodes(dev_cluster).values()
                       if int(n["status"]["allocatable"].get(names.GPU_RESOURCE, "0")) >= 8]
    # The other tests' pods live in other namespaces but may still hold GPUs: count free ones.
    dev_cluster.apply(_deployment("whole", replicas=len(eight_gpu_nodes) + 1, gpus=8), namespace=namespace)
    pods = wait_for("all but one 8-GPU pod Ready", lambda: (p := _pods(dev_cluster, namespace, "app=whole")) and sum(
        x["status"].get("phase") == "Running" for x in p) >= 1 and sum(
        not x["spec"].get("nodeName") for x in p) >= 1 and p, timeout=60)
    placed = [p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")]
    assert len(placed) == len(set(placed)), "two 8-GPU pods on one node: GPU capacity is not enforced"
    assert set(placed) <= {n["metadata"]["name"] for n in eight_gpu_nodes}
    wait_for("a FailedScheduling event naming nvidia.com/gpu", lambda: any(
        "nvidia.com/gpu" in e.get("message", "") for e in dev_cluster.get(
            "events", "-n", namespace, "--field-selector", "reason=FailedScheduling")["items"]), timeout=30)


def test_job_completes_after_the_annotated_delay(dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.apply(_job("ok", annotations={names.ANNOTATION_KWOK_COMPLETE_AFTER: "3s"}), namespace=namespace)
    assert wait_for("Job ok to finish", lambda: _job_condition(dev_cluster, namespace, "ok"), timeout=60) == "Complete"
    (pod,) = _pods(dev_cluster, namespace, "job-name=ok")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded" and terminated["exitCode"] == 0
    job = dev_cluster.get("job", "ok", "-n", namespace)
    took = _seconds(job["status"]["completionTime"]) - _seconds(job["status"]["startTime"])
    assert took >= 2, f"the Job finished {took}s after it started; the 3s delay annotation was ignored"


def test_job_marked_to_fail_fails_with_exit_code_1(dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.apply(_job("bad", labels={names.LABEL_KWOK_FAIL: "true"}), namespace=namespace)
    assert wait_for("Job bad to finish", lambda: _job_condition(dev_cluster, namespace, "bad"), timeout=60) == "Failed"
    (pod,) = _pods(dev_cluster, namespace, "job-name=bad")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1


def test_kwok_leaves_skipped_pods_alone(dev_cluster: DevCluster, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "main", "image": "x"}]}}
    try:
        dev_cluster.apply([
            {**pod, "metadata": {"name": "skipped", "labels": {names.LABEL_KWOK_SKIP: "true", "t": "1"}},
             "spec": {**pod["spec"], "nodeName": "h100-0"}},
            {**pod, "metadata": {"name": "normal", "labels": {"t": "1"}}, "spec": {**pod["spec"], "nodeName": "h100-0"}},
        ], namespace=namespace)
        wait_for("pod normal Running", lambda: dev_cluster.get("pod", "normal", "-n", namespace)["status"].get("phase") == "Running")
        status = dev_cluster.get("pod", "skipped", "-n", namespace)["status"]
        assert status.get("phase") == "Pending" and "containerStatuses" not in status, status
    finally:
        dev_cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=false")


def test_pools_add_a_gpu_type_at_run_time_and_take_it_away(dev_cluster: DevCluster) -> None:
    t4 = Pool(name="t4", count=1, gpu=Gpu(product="Tesla-T4", compute_capability="7.5", count=4, memory_mib=15360))
    with dev_cluster.pools([*read_pools(), t4]):
        node = _nodes(dev_cluster)["t4-0"]
        assert node["metadata"]["labels"][names.GFD_FAMILY] == "turing"
        assert node["status"]["allocatable"][names.GPU_RESOURCE] == "4"
    assert "t4-0" not in _nodes(dev_cluster)
    assert "h100-0" in _nodes(dev_cluster)


def test_kubectl_apply_of_a_manifest_file_through_the_built_kubectl(
        dev_cluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    versions = json.loads(dev_cluster.kubectl("version", "-o", "json"))
    assert re.match(r"^v1\.36\.\d+$", versions["clientVersion"]["gitVersion"])
    assert versions["serverVersion"]["gitVersion"] == versions["clientVersion"]["gitVersion"]
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\ndata:\n  answer: '42'\n")
    out = dev_cluster.kubectl("apply", "-n", namespace, "-f", str(manifest))
    assert "configmap/smoke created" in out
    assert dev_cluster.get("configmap", "smoke", "-n", namespace)["data"] == {"answer": "42"}


def test_helm_version_template_and_install(dev_cluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    assert re.search(r'Version:"v3\.21\.\d+"', dev_cluster.helm("version"))
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n")
    rendered = dev_cluster.helm("template", "demo", str(chart), "--set", "greeting=hi")
    assert "name: demo-cm" in rendered and 'greeting: "hi"' in rendered
    dev_cluster.helm("install", "demo", str(chart), "-n", namespace, "--wait", "--timeout", "60s")
    data = dev_cluster.get("configmap", "demo-cm", "-n", namespace)["data"]
    assert data["greeting"] == "hello" and data["kube"].startswith("v1.36.")


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
