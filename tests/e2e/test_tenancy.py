"""Two tenants, one store, the real operator on the dev cluster: keys and locations per namespace.

Both namespaces apply the same ModelDeployment (same ``pvc://models/resnet``); each gets its
own key, its engine under ``<store>/<namespace>/<key>/``, and a Deployment whose engine set
names only its own key with the pinned sha256 (the claim's sub-path and read-only mount are
checked by tests/planning/test_tenancy.py and, through admission, test_workload_security.py).
An engine planted under the other namespace's location is never picked up.
"""
from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import yaml
from kubernetes import client

from trtop import names
from trtop_dev.devcluster import testing

from .operator_harness import ConverterStandIn, OperatorProcess, condition, get_md, load_clients, wait_for

pytestmark = pytest.mark.e2e
SPEC = {"model": {"uri": "pvc://models/resnet", "format": "savedmodel"},
        "engine": {"targets": ["cpu"], "backoffLimit": 0,
                   "podAnnotations": {names.ANNOTATION_KWOK_COMPLETE_AFTER: "2s"}},
        "scaling": {"mode": "none"}}


def _bound_claim(dev_cluster, namespace: str, tmp_path) -> None:
    """A claim ``models`` in ``namespace``, bound at once to a volume made for it (no provisioner here)."""
    volume = f"models-{namespace}"[:63]
    manifests = [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                  "hostPath": {"path": str(tmp_path / volume)},
                  "claimRef": {"namespace": namespace, "name": "models"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": namespace},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]
    dev_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))


@contextlib.contextmanager
def _operator_over(dev_cluster, namespaces: tuple[str, ...], tmp_path, **env: str):
    """The real operator over ``namespaces`` and a held converter stand-in in each (``hold`` set:
    nothing is published until a test clears it); yields the store, the API clients, the stand-ins.
    The operator must stop cleanly and log no traceback."""
    store = tmp_path / "store"
    store.mkdir()
    api, custom = load_clients(dev_cluster.kubeconfig)
    stand_ins = [ConverterStandIn(api, ns, store) for ns in namespaces]
    for s in stand_ins:
        s.hold.set()
        s.start()
    op = OperatorProcess(dev_cluster.kubeconfig, namespaces[0], store, tmp_path / "operator.log",
                         TRTOP_NAMESPACES=",".join(namespaces), **env).start()
    try:
        yield store, api, custom, stand_ins
    finally:
        for s in stand_ins:
            s.stop()
        code = op.stop()
    assert code in (0, -15), op.log()[-2000:]
    assert "Traceback" not in op.log(), op.log()[-4000:]


@pytest.fixture
def second_namespace(dev_cluster):
    name = testing.create_namespace(dev_cluster, "tenant-b")
    yield name
    testing.delete_namespace(dev_cluster, name)


def test_two_namespaces_with_the_same_model_get_their_own_engines(dev_cluster, namespace, second_namespace,
                                                                   tmp_path):
    # The stand-ins publish nothing until the build pods could run (a real converter would not either).
    with _operator_over(dev_cluster, (namespace, second_namespace), tmp_path) as (store, api, custom, stand_ins):
        manifest = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "resnet"},
                    "spec": SPEC}
        (tmp_path / "md.yaml").write_text(yaml.safe_dump(manifest))
        dev_cluster.kubectl("apply", "-n", namespace, "-f", str(tmp_path / "md.yaml"))

        def ready(ns: str) -> dict:
            return wait_for(f"md/resnet EnginesReady and served in {ns}", lambda: (
                (md := get_md(custom, ns, "resnet")) and condition(md, "EnginesReady").get("status") == "True"
                and md["status"].get("servedEngines") and md), timeout=90)

        # The claim does not exist yet: the build pod cannot be scheduled, and the status says why.
        wait_for("the engine's status to name the missing claim", lambda: any(
            'persistentvolumeclaim "models" not found' in e.get("message", "")
            for e in ((get_md(custom, namespace, "resnet") or {}).get("status") or {}).get("engines") or []),
            timeout=60)
        for ns in (namespace, second_namespace):
            _bound_claim(dev_cluster, ns, tmp_path)
        for s in stand_ins:
            s.hold.clear()
        first = ready(namespace)
        (key_a,) = [e["key"] for e in first["status"]["engines"]]
        # Plant tenant A's engine in tenant B's location (what a writer with store access could do).
        shutil.copytree(store / namespace / key_a, store / second_namespace / key_a)
        dev_cluster.kubectl("apply", "-n", second_namespace, "-f", str(tmp_path / "md.yaml"))
        second = ready(second_namespace)
        (key_b,) = [e["key"] for e in second["status"]["engines"]]
        assert key_a != key_b
        assert stand_ins[1].seen.keys() == {key_b}  # B built its own engine; A's was not "found"

        apps = client.AppsV1Api(api)
        for ns, key in ((namespace, key_a), (second_namespace, key_b)):
            record = json.loads((store / ns / key / "engine.json").read_text())
            (unit,) = apps.list_namespaced_deployment(ns, label_selector=f"{names.LABEL_MODEL_DEPLOYMENT}=resnet").items
            pod = unit.to_dict()["spec"]["template"]["spec"]
            container = pod["containers"][0]
            env = {e["name"]: e["value"] for e in container["env"] if e.get("value") is not None}
            (entry,) = json.loads(env[names.ENV_ENGINE_SET])
            assert (entry["key"], entry["sha256"]) == (key, record["sha256"])
            assert pod["automount_service_account_token"] is False


def test_a_store_sharing_group_builds_each_engine_once(dev_cluster, namespace, second_namespace, tmp_path):
    """Two namespaces of one sharing group, the same model: one key, one build Job (in the namespace
    that asked first), which the other's status names; both served from the one engine."""
    # The first build stays running (held) while the second namespace asks for the same engine.
    with _operator_over(dev_cluster, (namespace, second_namespace), tmp_path,
                        TRTOP_STORE_SHARING=f"ml={namespace},{second_namespace}") as (store, api, custom, stand_ins):
        _bound_claim(dev_cluster, namespace, tmp_path)
        manifest = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "resnet"},
                    "spec": SPEC}
        (tmp_path / "md.yaml").write_text(yaml.safe_dump(manifest))

        def engines(ns: str) -> list[dict]:
            return ((get_md(custom, ns, "resnet") or {}).get("status") or {}).get("engines") or []

        dev_cluster.kubectl("apply", "-n", namespace, "-f", str(tmp_path / "md.yaml"))
        wait_for("the first namespace's build Job", lambda: stand_ins[0].seen, timeout=60)
        dev_cluster.kubectl("apply", "-n", second_namespace, "-f", str(tmp_path / "md.yaml"))
        (job_name,) = stand_ins[0].seen.values()
        (building,) = wait_for("the second namespace's status to name the first one's Job", lambda: [
            e for e in engines(second_namespace) if e.get("job") == f"{namespace}/{job_name}"], timeout=60)
        assert building["state"] == "Building", building
        for s in stand_ins:
            s.hold.clear()
        for ns in (namespace, second_namespace):
            wait_for(f"md/resnet EnginesReady and served in {ns}", lambda ns=ns: (
                (md := get_md(custom, ns, "resnet")) and condition(md, "EnginesReady").get("status") == "True"
                and md["status"].get("servedEngines")), timeout=90)
        (key_a,), (key_b,) = ([e["key"] for e in engines(ns)] for ns in (namespace, second_namespace))
        assert key_a == key_b == building["key"]
        assert (store / "shared.ml" / key_a / names.ENGINE_METADATA_FILE).is_file()
        assert stand_ins[1].seen == {}  # the second namespace never built it
        jobs = client.BatchV1Api(api).list_namespaced_job(
            second_namespace, label_selector=f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}").items
        assert jobs == []
