"""Real pods on the dev cluster's real node, from the server-cpu image built here.

A kubelet on containerd + runc starts ``trtop serve`` from ``ghcr.io/trtop/server-cpu``
(built by hack/build-images.sh when missing) with an ONNX model from a ConfigMap, and the
pod answers a KServe v2 inference; a namespace enforcing the ``restricted`` Pod Security
level admits a pod with the chart's securityContexts and the kubelet runs it; the chart
installs the operator from ``ghcr.io/trtop/operator`` there and it becomes Ready, talking
to the API server through the ``kubernetes`` Service (kube-proxy).
Skipped, saying why, where the real node cannot run ($TRTOP_REQUIRE_REAL_NODE=1 makes that
a failure: .ci/run sets it).
"""
from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.serve.conftest import make_affine_onnx
from trtop import names, versions
from trtop_dev.devcluster import nodeconfig, workspace
from trtop_dev.devcluster.containerd import for_checkout
from trtop_dev.devcluster.testing import DevCluster, wait_for
from tests.e2e.real_node import require_real_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
ROOT = workspace.repo_root()
CHART_VALUES = yaml.safe_load((ROOT / "charts" / "trtop" / "values.yaml").read_text())


@pytest.fixture(scope="module")
def real_node(dev_cluster: DevCluster) -> str:
    return require_real_node(dev_cluster)


def _built(image: str, name: str) -> str:
    """``image`` in the node's containerd (built when missing: minutes, cold)."""
    if image not in for_checkout(ROOT).ctr("images", "ls", "-q").split():
        subprocess.run([str(ROOT / "hack" / "build-images.sh"), name], check=True, timeout=1200)
    return image


@pytest.fixture(scope="module")
def server_cpu_image(real_node: str) -> str:
    return _built(versions.SERVER_CPU_IMAGE, "server-cpu")


@pytest.fixture(scope="module")
def operator_image(real_node: str) -> str:
    return _built(versions.OPERATOR_IMAGE, "operator")


def _pod(name: str, image: str, command: list[str], *, volumes: list[dict[str, Any]] | None = None,
         mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A pod pinned to the real node with the chart's pod and container securityContexts."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": nodeconfig.NODE_NAME},
            "tolerations": [nodeconfig.TOLERATION],
            "securityContext": CHART_VALUES["podSecurityContext"],
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
                "securityContext": CHART_VALUES["securityContext"],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(mounts or [])],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
        },
    }


def _phase(dev_cluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = dev_cluster.get("pod", name, "-n", namespace)
    return pod


def _binary_infer(url: str) -> tuple[dict[str, Any], bytes]:
    """A v2 request with its tensor in binary (the binary tensor data extension), answered in binary."""
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                     "parameters": {"binary_data_size": 32}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    request = urllib.request.Request(url, data=header + struct.pack("<8f", 0, 1, 2, 3, 1, 1, 1, 1), headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = answer.read()
        length = int(answer.headers.get("Inference-Header-Content-Length", len(body)))
    return json.loads(body[:length]), body[length:]


@pytest.mark.parametrize("front_end", [["--frontends", "0"], ["--frontends", "1", "--http-frontend", "native"]],
                         ids=["one-process", "native"])
def test_server_cpu_pod_answers_a_v2_inference(dev_cluster: DevCluster, namespace: str, server_cpu_image: str,
                                               tmp_path: Path, front_end: list[str]) -> None:
    """The server image answers JSON and binary v2 requests in a restricted container, in one process and
    with the native front-end (serving.httpFrontend: native) that the image ships: it answers binary
    requests itself and hands JSON ones to a Python front-end over a unix socket in the pod's /tmp."""
    model = make_affine_onnx(tmp_path / "affine.onnx")
    dev_cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model"},
                       "binaryData": {"affine.onnx": base64.b64encode(model.read_bytes()).decode()}}, namespace)
    pod = _pod("server", server_cpu_image,
               ["trtop", "serve", "--model", "/models/affine.onnx", "--model-name", "affine",
                "--port", "8000", "--grpc-port", "0", *front_end, "--device", "cpu"],
               volumes=[{"name": "model", "configMap": {"name": "model"}}],
               mounts=[{"name": "model", "mountPath": "/models", "readOnly": True}])
    pod["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready", "port": 8000},
                                                      "periodSeconds": 1}
    dev_cluster.apply(pod, namespace)
    try:
        dev_cluster.kubectl("wait", "--for=condition=Ready", "--timeout=180s", "pod/server", "-n", namespace,
                            timeout=200)
    except Exception:
        print(dev_cluster.kubectl("describe", "pod", "server", "-n", namespace, check=False))
        print(dev_cluster.kubectl("logs", "server", "-n", namespace, check=False))
        raise
    status = _phase(dev_cluster, namespace, "server")["status"]
    node = dev_cluster.get("node", nodeconfig.NODE_NAME)
    assert names.KWOK_NODE_ANNOTATION not in node["metadata"].get("annotations", {})  # kwok leaves it alone
    assert status["hostIP"] in [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    # The pod's own address on the CNI bridge, reached from this host.
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [0, 1, 2, 3, 1, 1, 1, 1]}]}
    request = urllib.request.Request(f"http://{status['podIP']}:8000/v2/models/affine/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        outputs = {o["name"]: o for o in json.load(answer)["outputs"]}
    assert outputs["y"]["data"] == [1, 3, 5, 7, 3, 3, 3, 3]
    assert outputs["s"]["data"] == [6, 4] and outputs["s"]["shape"] == [2, 1]
    head, tensor = _binary_infer(f"http://{status['podIP']}:8000/v2/models/affine/infer")
    (y,) = head["outputs"]
    assert y["name"] == "y" and y["shape"] == [2, 4] and y["parameters"]["binary_data_size"] == 32
    assert list(np.frombuffer(tensor, "<f4")) == [1, 3, 5, 7, 3, 3, 3, 3]
    # The kubelet serves logs (API server -> kubelet, with the client certificate).
    logs = dev_cluster.kubectl("logs", "server", "-n", namespace)
    assert "affine" in logs
    assert ("through 1 native front-end processes" in logs) == ("native" in front_end), logs


def test_restricted_namespace_admits_and_runs_the_charts_security_context(dev_cluster: DevCluster, namespace: str,
                                                                           server_cpu_image: str) -> None:
    dev_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/enforce-version=latest")
    # A root pod is refused by admission: the label is enforced, not decorative.
    root_pod = _pod("as-root", server_cpu_image, ["id"])
    root_pod["spec"]["securityContext"] = {}
    root_pod["spec"]["containers"][0]["securityContext"] = {}
    refused = dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(root_pod), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr
    # The chart's securityContexts pass, and the kubelet enforces them in the container.
    probe = ("id -u; id -g; (touch /probe 2>/dev/null && echo rootfs-writable) || echo rootfs-read-only; "
             "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; grep Seccomp: /proc/self/status")
    dev_cluster.apply(_pod("restricted", server_cpu_image, ["sh", "-c", probe]), namespace)
    wait_for("pod restricted to finish",
             lambda: _phase(dev_cluster, namespace, "restricted")["status"].get("phase") in ("Succeeded", "Failed"),
             timeout=120)
    assert _phase(dev_cluster, namespace, "restricted")["status"]["phase"] == "Succeeded"
    lines = dev_cluster.kubectl("logs", "restricted", "-n", namespace).split("\n")
    assert lines[:3] == ["1000", "1000", "rootfs-read-only"]
    assert "CapEff:\t0000000000000000" in lines
    assert "NoNewPrivs:\t1" in lines and "Seccomp:\t2" in lines


def test_chart_runs_the_operator_on_the_real_node(dev_cluster: DevCluster, namespace: str, operator_image: str,
                                                  tmp_path: Path) -> None:
    dev_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    dev_cluster.kubectl("create", "secret", "generic", "store-creds", "-n", namespace,
                        "--from-literal=AWS_ACCESS_KEY_ID=test", "--from-literal=AWS_SECRET_ACCESS_KEY=test",
                        "--from-literal=AWS_ENDPOINT_URL=http://minio.invalid:9000")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "nodeSelector": {"kubernetes.io/hostname": nodeconfig.NODE_NAME},
        "tolerations": [nodeconfig.TOLERATION],
        "serviceMonitor": {"enabled": False},
        "store": {"pvc": {"create": False}, "s3": {"uri": "s3://engines/e2e", "existingSecret": "store-creds"}},
    }))
    release = f"rn-{namespace[-6:]}"
    try:
        dev_cluster.helm("install", release, str(ROOT / "charts" / "trtop"), "-n", namespace, "-f", str(values),
                         "--wait", "--timeout=180s", timeout=240)
        (pod,) = dev_cluster.get("pods", "-n", namespace, "-l", f"{names.LABEL_INSTANCE}={release}")["items"]
        assert pod["spec"]["nodeName"] == nodeconfig.NODE_NAME
        assert pod["spec"]["containers"][0]["image"] == operator_image
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])
        # Ready means kopf reached the API server from the pod (10.0.0.1 through kube-proxy, TLS verified).
        logs = dev_cluster.kubectl("logs", pod["metadata"]["name"], "-n", namespace)
        assert "CERTIFICATE_VERIFY_FAILED" not in logs and "No module named" not in logs, logs[-3000:]
    finally:
        dev_cluster.helm("uninstall", release, "-n", namespace, "--wait", check=False, timeout=120)


# The sidecar's client: stdlib only (the server-cpu image has no tritonclient). It writes the input into a
# /dev/shm object, registers it and an output object with the server on localhost, asks for an inference
# that names both regions, and prints what the server wrote into the output object.
SHM_CLIENT = """
import json, struct, time, urllib.request
base = "http://127.0.0.1:8000"
def post(path, doc):
    req = urllib.request.Request(base + path, data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as answer:
        return answer.read()
for _ in range(600):
    try:
        urllib.request.urlopen(base + "/v2/health/ready", timeout=2).read()
        break
    except OSError:
        time.sleep(0.5)
with open("/dev/shm/trtop-in", "wb") as f:
    f.write(struct.pack("<8f", 0, 1, 2, 3, 1, 1, 1, 1))
with open("/dev/shm/trtop-out", "wb") as f:
    f.write(bytes(32))
post("/v2/systemsharedmemory/region/in/register", {"key": "/trtop-in", "offset": 0, "byte_size": 32})
post("/v2/systemsharedmemory/region/out/register", {"key": "/trtop-out", "offset": 0, "byte_size": 32})
answer = json.loads(post("/v2/models/affine/infer", {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 32}}],
    "outputs": [{"name": "y", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 32}}]}))
with open("/dev/shm/trtop-out", "rb") as f:
    print("y", json.dumps(list(struct.unpack("<8f", f.read(32)))))
print("answer", json.dumps(answer))
"""


def test_a_sidecar_hands_the_server_tensors_in_the_pods_shared_memory(
        dev_cluster: DevCluster, namespace: str, server_cpu_image: str, tmp_path: Path) -> None:
    """What serving.sharedMemory + serving.sidecars make, in real containers: the sidecar (as the planner
    builds it: restricted, read-only root, its own /tmp) and the server share the pod's /dev/shm, and an
    inference whose tensors are only in regions comes back right."""
    from trtop.api.spec import Sidecar
    from trtop.config import Settings
    from trtop.planning.serving import SIDECAR_TMP, sidecar_container

    model = make_affine_onnx(tmp_path / "affine.onnx")
    dev_cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model"},
                       "binaryData": {"affine.onnx": base64.b64encode(model.read_bytes()).decode()}}, namespace)
    pod = _pod("shm", server_cpu_image,
               ["trtop", "serve", "--model", "/models/affine.onnx", "--model-name", "affine", "--port", "8000",
                "--grpc-port", "0", "--frontends", "1", "--device", "cpu", "--shared-memory", "system"],
               volumes=[{"name": "model", "configMap": {"name": "model"}}, {"name": SIDECAR_TMP, "emptyDir": {}}],
               mounts=[{"name": "model", "mountPath": "/models", "readOnly": True}])
    client = sidecar_container(Sidecar(name="client", image=server_cpu_image, command=("python3", "-c", SHM_CLIENT)),
                               Settings(image_pull_policy="Never"))
    pod["spec"]["containers"].append(client)
    dev_cluster.apply(pod, namespace)

    def client_state() -> dict[str, Any]:
        statuses = _phase(dev_cluster, namespace, "shm").get("status", {}).get("containerStatuses", [])
        return next((s["state"] for s in statuses if s["name"] == "client"), {})

    try:
        wait_for("the sidecar's inference", lambda: "terminated" in client_state(), timeout=240)
        logs = dev_cluster.kubectl("logs", "shm", "-c", "client", "-n", namespace, check=False).stdout
        assert client_state()["terminated"]["exitCode"] == 0, logs
    except Exception:
        print(dev_cluster.kubectl("describe", "pod", "shm", "-n", namespace, check=False))
        print(dev_cluster.kubectl("logs", "shm", "-c", "main", "-n", namespace, check=False))
        raise
    lines = dict(line.split(" ", 1) for line in logs.strip().splitlines() if line.startswith(("y ", "answer ")))
    assert json.loads(lines["y"]) == [1, 3, 5, 7, 3, 3, 3, 3]  # 2x + 1, written by the server into the region
    (y,) = json.loads(lines["answer"])["outputs"]
    assert y["name"] == "y" and y["shape"] == [2, 4] and "data" not in y  # the answer only names it
