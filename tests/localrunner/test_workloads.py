"""trtop's own workloads under the local runner: the planner's build Job and serving Deployment.

The Job and Deployment come from ``trtop.planning`` exactly as the operator would make
them (minus the owner reference: no ModelDeployment exists, and no operator runs), with
the engine store and the model on PersistentVolumeClaims bound to hostPath volumes. The
real ``trtop convert`` builds a CPU (ONNX Runtime) engine for a tiny Keras model, then the
real ``trtop serve`` answers an inference request on the pod's own address.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trtop.api.engine import EngineRecord
from trtop.api.spec import parse_spec
from trtop.api.targets import Target
from trtop.config import Settings
from trtop_dev.devcluster.testing import DevCluster, wait_for
from trtop_dev.localrunner import LocalRunner
from trtop.planning.builds import build_job
from trtop.planning.engines import EngineStatus, build_engine_request, job_name
from trtop.planning.serving import build_unit

pytestmark = pytest.mark.slow


def claim_on(path: Path, namespace: str, claim: str) -> list[dict[str, Any]]:
    """A hostPath PersistentVolume pre-bound to ``namespace/claim``, and the claim."""
    volume = f"lr-{namespace}-{claim}"[:63]
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "hostPath": {"path": str(path)}, "persistentVolumeReclaimPolicy": "Retain",
                  "claimRef": {"namespace": namespace, "name": claim}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]


def unowned(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"].pop("ownerReferences", None)  # the garbage collector would delete it: no such owner
    return manifest


def test_the_planners_build_job_and_deployment_really_run(dev_cluster: DevCluster, namespace: str,
                                                         local_runner: LocalRunner, tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    (tmp_path / "models").mkdir()
    model.save(tmp_path / "models" / "tiny.keras")
    store = tmp_path / "store"
    store.mkdir()
    volumes = claim_on(tmp_path / "models", namespace, "models") + claim_on(store, namespace, "engines")
    dev_cluster.apply(volumes)
    try:
        placement = local_runner.placement()
        spec = parse_spec({
            "model": {"uri": "pvc://models/tiny.keras", "format": "keras"},
            # Build Jobs take engine.tolerations (the serving ones only for GPU taints).
            "engine": {"targets": ["cpu"], "batch": {"min": 1, "opt": 2, "max": 4}, "backoffLimit": 0,
                       "tolerations": placement["tolerations"]},
            "serving": {"nodeSelector": placement["nodeSelector"], "tolerations": placement["tolerations"]},
        })
        settings = Settings(store_pvc="engines")
        md = {"metadata": {"name": "tiny", "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000001"}}
        request = build_engine_request(spec, Target.parse("cpu"), settings, namespace)
        building = EngineStatus(request.key, request.target, "Pending", request, job_name=job_name(request))
        job = unowned(build_job(md, spec, building, settings))
        dev_cluster.apply(job)

        def job_done() -> str:
            conditions = dev_cluster.get("job", job["metadata"]["name"], "-n", namespace).get("status", {}).get(
                "conditions", [])
            return next((c["type"] for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), "")

        outcome = wait_for("the build Job to finish", job_done, timeout=240, interval=1)
        (pod,) = dev_cluster.get("pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}")["items"]
        log = local_runner.log_path(namespace, pod["metadata"]["name"])
        assert outcome == "Complete", log.read_text()[-3000:]
        summary = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
        assert summary["ok"] is True and summary["key"] == request.key and summary["backend"] == "onnxruntime"
        assert summary["store"] == str(store / namespace)  # the mount path, mapped to <claim's hostPath>/<namespace>
        # The claim is mounted at the namespace's sub-path: <claim>/<namespace>/<key>/.
        record = EngineRecord.from_json((store / namespace / request.key / "engine.json").read_text())
        assert (store / namespace / request.key / record.folder / record.artifact).is_file()  # its upload folder

        ready = EngineStatus(request.key, request.target, "Ready", request, record=record, job_name=building.job_name)
        deployment = unowned(build_unit(md, spec, ready, 1, settings))
        dev_cluster.apply(deployment)

        def serving_pod() -> dict[str, Any] | None:
            items = dev_cluster.get("pods", "-n", namespace, "-l", "app.kubernetes.io/component=inference")["items"]
            return next((p for p in items if any(c["type"] == "Ready" and c["status"] == "True"
                                                  for c in p["status"].get("conditions", []))), None)

        server = wait_for("the serving pod Ready", serving_pod, timeout=120, interval=1)
        base = f"http://{server['status']['podIP']}:{spec.serving.port}"
        with urllib.request.urlopen(f"{base}/v2/models/tiny", timeout=10) as answer:
            (tensor,) = json.load(answer)["inputs"]
        x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
        body = {"inputs": [{"name": tensor["name"], "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
        post = urllib.request.Request(f"{base}/v2/models/tiny/infer", data=json.dumps(body).encode(),
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(post, timeout=30) as answer:
            (output,) = json.load(answer)["outputs"]
        got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    finally:
        dev_cluster.kubectl("delete", "deployments,jobs", "--all", "-n", namespace, "--wait=false")
        dev_cluster.kubectl("delete", "persistentvolume", *(v["metadata"]["name"] for v in volumes[::2]),
                            "--ignore-not-found", "--wait=false")
