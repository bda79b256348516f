"""The pods trtop makes pass the restricted Pod Security profile (e2e, real admission).

A namespace labelled ``pod-security.kubernetes.io/enforce=restricted`` admits the pods of
the planner's build Job and inference Deployment (created with a server-side dry run, so
the real admission plugin decides); a pod that breaks the profile is refused there, so
the check can fail.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests.planning.conftest import record_for
from trtop.config import Settings
from trtop_dev.devcluster import testing
from trtop.planning.facts import ClusterFacts, NodeFact
from trtop.planning.plan import plan_model_deployment

pytestmark = pytest.mark.e2e
SPEC = {"model": {"uri": "pvc://models/resnet", "format": "savedmodel"}, "engine": {"targets": ["cpu", "9.0"]},
        "serving": {"tolerations": [{"key": "nvidia.com/gpu.product", "operator": "Exists", "effect": "NoSchedule"}]}}
NODES = (NodeFact("cpu-0", {}), NodeFact("gpu-0", {"nvidia.com/gpu.compute.major": "9",
                                                   "nvidia.com/gpu.compute.minor": "0"}, True, 8, 0))


@pytest.fixture
def restricted(dev_cluster) -> Any:
    name = testing.create_namespace(dev_cluster, "restricted")
    dev_cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/enforce-version=latest")
    yield name
    testing.delete_namespace(dev_cluster, name)


def pods_of_the_plan(namespace: str, settings: Settings) -> list[dict[str, Any]]:
    body = {"apiVersion": "trtop.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "resnet", "namespace": namespace, "uid": "uid-1", "generation": 1},
            "spec": SPEC, "status": {}}
    first = plan_model_deployment(body, ClusterFacts(nodes=NODES), settings, now="2026-12-02T00:00:00Z")
    served = plan_model_deployment(body, ClusterFacts(nodes=NODES, records={e.key: record_for(e) for e in first.engines}),
                                   settings, now="2026-12-02T00:00:00Z")
    assert first.jobs_to_create and served.units
    templates = [j["spec"]["template"] for j in first.jobs_to_create] + [u["spec"]["template"] for u in served.units]
    return [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"trtop-psa-{i}", "namespace": namespace, "labels": t["metadata"]["labels"]},
             "spec": t["spec"]} for i, t in enumerate(templates)]


def admitted(dev_cluster, pod: dict[str, Any]) -> tuple[bool, str]:
    done = dev_cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    return done.returncode == 0, done.stderr


@pytest.mark.parametrize("store", ["pvc", "s3"])
def test_generated_pods_pass_the_restricted_profile(dev_cluster, restricted, store):
    settings = Settings(store_pvc="engines") if store == "pvc" else \
        Settings(store_uri="s3://engines/prod", store_secret="rw", store_read_secret="ro")
    pods = pods_of_the_plan(restricted, settings)
    assert len(pods) == 3  # two build Jobs (cpu, sm90) and the inference Deployment
    for pod in pods:
        ok, why = admitted(dev_cluster, pod)
        assert ok, f"{pod['metadata']['labels'].get('app.kubernetes.io/component')}: {why}"


def test_a_pod_that_breaks_the_profile_is_refused(dev_cluster, restricted):
    pod = pods_of_the_plan(restricted, Settings(store_pvc="engines"))[0]
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    ok, why = admitted(dev_cluster, pod)
    assert not ok and "restricted" in why


@pytest.mark.parametrize("mode", ["pvc", "s3"])
def test_the_chart_operator_pod_passes_the_restricted_profile(dev_cluster, restricted, render, mode):
    """The operator's own pod, as the chart renders it with its defaults: non-root, read-only root, no
    capabilities, RuntimeDefault seccomp, no privilege escalation, memory limit and probes."""
    from tests.charts.chart import one
    args = () if mode == "pvc" else ("--set", "store.pvc.create=false", "--set", "store.s3.uri=s3://engines/prod",
                                     "--set", "store.s3.existingSecret=store-creds")
    template = one(render(*args), "Deployment")["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] and container["livenessProbe"] and container["readinessProbe"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    spec = {**template["spec"], "serviceAccountName": "default"}
    ok, why = admitted(dev_cluster, {"apiVersion": "v1", "kind": "Pod",
                                     "metadata": {"name": "trtop-operator-psa", "namespace": restricted,
                                                  "labels": template["metadata"]["labels"]}, "spec": spec})
    assert ok, why
