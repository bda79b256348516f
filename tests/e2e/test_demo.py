"""The truly end-to-end path, as the demo runs it, with every step real.

Dev cluster (real control plane) + its real node (kubelet, containerd, runc, CNI,
kube-proxy) -> the operator, converter-cpu and server-cpu images built here -> trtop
installed with Helm, the operator in a pod on that node -> the demo's Keras model on a
claim -> `kubectl apply -f examples/demo/modeldeployment.yaml` -> the converter in a build
Job's container -> the server in the serving Deployment's containers -> an inference
request through the Service, checked against TensorFlow -> load -> the builtin autoscaler
scales up, holds, and scales down after its window.
"""
from __future__ import annotations

import pytest

import yaml

from tests.e2e.real_node import require_real_node
from trtop import names, versions
from trtop_dev.devcluster import nodeconfig, workspace
from trtop_dev.devcluster.demo import NAMESPACE, Demo

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

AUTOSCALE_INTERVAL = 3  # operator.autoscaleIntervalSeconds the demo installs with
SCALE_DOWN_WINDOW = 20  # scaling.scaleDownWindowSeconds of examples/demo/modeldeployment.yaml


@pytest.fixture
def demo(dev_cluster, tmp_path):
    require_real_node(dev_cluster)
    lines: list[str] = []
    d = Demo(dev_cluster, say=lines.append, storage=tmp_path / "storage")  # an empty engine store
    d.build_images()
    d.reset()
    try:
        yield d
    finally:
        print("\n".join(lines))
        if any("Failed" in line or "Stalled" in line for line in lines):
            print(dev_cluster.kubectl("get", "pods,jobs", "-n", NAMESPACE, "-o", "wide", check=False))
        d.reset()


def test_the_demo_example_runs_on_the_real_node():
    md = yaml.safe_load((workspace.repo_root() / "examples/demo/modeldeployment.yaml").read_text())["spec"]
    assert md["serving"]["nodeSelector"] == {nodeconfig.TAINT["key"]: "true"}
    assert md["serving"]["tolerations"] == md["engine"]["tolerations"] == [nodeconfig.TOLERATION]


def test_kubectl_apply_to_a_real_answer_and_scaling(demo, dev_cluster):
    demo.install(watch_only_demo_namespace=True)
    md = demo.deploy(timeout=300)

    # Status contract along the way.
    status = md["status"]
    assert status["observedGeneration"] == md["metadata"]["generation"]
    assert status["enginesReady"] == "1/1" and status["phase"] == "Ready"
    engine = status["engines"][0]
    assert engine["target"] == "cpu" and engine["backend"] == "onnxruntime" and engine["state"] == "Ready"
    assert engine["parityMaxAbsError"] < 1e-4  # the converter verified it against TensorFlow
    dev_cluster.kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", "md/demo", "--timeout=10s")

    # A real answer, equal to TensorFlow's on the same input.
    demo.ask()
    assert len(demo.result.answer) == 10 and abs(sum(demo.result.answer) - 1) < 1e-4
    assert demo.result.max_abs_error < 1e-4
    assert demo.result.answer.index(max(demo.result.answer)) == demo.result.expected.index(max(demo.result.expected))

    # Load: up within two autoscale periods, no oscillation, down only after the window.
    demo.load(seconds=30, concurrency=12, settle=SCALE_DOWN_WINDOW + 6 * AUTOSCALE_INTERVAL)
    rows = demo.result.timeline.rows
    load_start, load_end = rows[0][0], rows[0][0] + 30
    first_up = next(t for t, _, desired, _, _ in rows if desired > 1)
    assert first_up - load_start <= 2 * AUTOSCALE_INTERVAL + 4, demo.result.timeline.table()
    during = [desired for t, _, desired, _, _ in rows if first_up <= t <= load_end]
    assert during == sorted(during), f"replicas went down under constant load:\n{demo.result.timeline.table()}"
    assert demo.result.max_replicas_seen == 3  # maxReplicas of the example
    first_down = next(t for t, _, desired, _, _ in rows if t > load_end and desired < demo.result.max_replicas_seen)
    # The last high reading may precede the load's end by one autoscale period, and the timeline
    # sees a change up to one period late: the window holds if no step down comes sooner than that.
    assert first_down - load_end >= SCALE_DOWN_WINDOW - 2 * AUTOSCALE_INTERVAL, demo.result.timeline.table()
    assert demo.result.final_replicas == 1, demo.result.timeline.table()

    # What people read: an Event on reaching Ready (naming the ready engines) and each scale change.
    text = demo.summary()
    reasons = {e.split(":")[0] for e in demo.result.events}
    assert {"PhaseReady", "ScaledUp", "ScaledDown"} <= reasons, text
    assert any(e.startswith("PhaseReady:") and "engines ready" in e for e in demo.result.events), text
    # Every pod ran in a container on the real node, from the images built here.
    builds = dev_cluster.get("pods", "-n", NAMESPACE, "-l", f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}")
    assert builds["items"] and all(p["status"]["phase"] == "Succeeded" for p in builds["items"])
    serving = dev_cluster.get("pods", "-n", NAMESPACE, "-l", f"{names.LABEL_COMPONENT}={names.COMPONENT_INFERENCE}")
    operator = dev_cluster.get("pods", "-n", NAMESPACE, "-l", f"{names.LABEL_INSTANCE}=trtop")
    images = {p["metadata"]["name"]: p["spec"]["containers"][0]["image"]
              for p in builds["items"] + serving["items"] + operator["items"]}
    assert set(images.values()) == {versions.CONVERTER_CPU_IMAGE, versions.SERVER_CPU_IMAGE, versions.OPERATOR_IMAGE}
    for pod in builds["items"] + serving["items"] + operator["items"]:
        assert pod["spec"]["nodeName"] == nodeconfig.NODE_NAME
        state = pod["status"]["containerStatuses"][0]
        assert state["containerID"].startswith("containerd://"), state  # a runtime's container, not a process

