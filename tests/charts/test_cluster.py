"""The chart against the dev cluster's real API server (e2e).

- `helm template` output (both modes) passes a server-side dry run;
- `helm install` -> objects exist and the operator Deployment is Available (per kwok)
  -> `helm upgrade` changes them -> `helm uninstall` leaves no trtop object, the CRDs stay;
- a namespaced install: RBAC denies other namespaces, and the real operator, run with
  the installed Deployment's settings as the chart's ServiceAccount, brings a
  ModelDeployment from examples/ to Ready in its namespace and ignores one elsewhere;
- `kubectl apply -k deploy/cluster-wide` gives the same running operator as the chart.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes import client

from tests.charts.chart import CHART, NAMESPACE, ROOT
from tests.charts.operator_process import ChartOperator, service_account_kubeconfig
from tests.e2e.operator_harness import ConverterStandIn, load_clients, wait_for
from trtop import names
from trtop_dev.devcluster import testing

pytestmark = pytest.mark.e2e
S3_STORE = ["--set", "store.pvc.create=false", "--set", "store.s3.uri=s3://engines/e2e",
            "--set", "store.s3.existingSecret=store-creds"]
EXAMPLE = ROOT / "examples" / "keras-cpu.yaml"
EXAMPLE_NAME = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]


@pytest.fixture(scope="module")
def crds(dev_cluster):
    """The chart's CRDs, applied the way docs/install.md says to upgrade them."""
    dev_cluster.kubectl("apply", "--server-side", "--field-manager=trtop-chart-tests", "--force-conflicts",
                        "-f", str(CHART / "crds"))
    for crd in ("modeldeployments.trtop.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        dev_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")


@pytest.fixture
def extra_namespaces(dev_cluster):
    made: list[str] = []

    def make(hint: str) -> str:
        made.append(testing.create_namespace(dev_cluster, hint))
        return made[-1]
    yield make
    for name in made:
        testing.delete_namespace(dev_cluster, name)


def release_name() -> str:
    return f"trtop-{secrets.token_hex(3)}"  # holds the chart name: the release name is the full name


def store_secret(dev_cluster, namespace: str) -> None:
    dev_cluster.kubectl("create", "secret", "generic", "store-creds", "-n", namespace,
                        "--from-literal=AWS_ACCESS_KEY_ID=test", "--from-literal=AWS_SECRET_ACCESS_KEY=test",
                        "--from-literal=AWS_ENDPOINT_URL=http://minio.invalid:9000")


def can_i(dev_cluster, account: str, verb: str, resource: str, namespace: str | None = None, *extra: str) -> bool:
    where = ["-n", namespace] if namespace else []
    done = dev_cluster.kubectl("auth", "can-i", verb, resource, *where, *extra, f"--as={account}", check=False)
    assert done.stdout.strip() in {"yes", "no"}, done.stderr
    return done.stdout.strip() == "yes"


def env_of(container: dict) -> dict[str, str]:
    """name -> value (or the fieldPath it comes from); the API server drops empty values."""
    return {e["name"]: e.get("value") or e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
            for e in container["env"]}


def deployment(dev_cluster, namespace: str, name: str) -> dict:
    return dev_cluster.get("deployment", name, "-n", namespace)


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_passes_a_server_side_dry_run(dev_cluster, crds, namespace, extra_namespaces, helm_bin, mode):
    sets = ["--set", "serviceMonitor.enabled=false"]
    if mode == "namespaced":
        other = extra_namespaces("dry-run-b")
        sets += ["--set", "rbac.namespaced=true", "--set", f"watchNamespaces={{{namespace},{other}}}"]
    done = dev_cluster.helm("template", release_name(), str(CHART), "-n", namespace, *sets)
    applied = dev_cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=trtop-chart-tests",
                                  "-f", "-", input=done.stdout)
    kinds = {line.split("/")[0] for line in applied.splitlines()}
    assert "deployment.apps" in kinds and "serviceaccount" in kinds, applied
    assert ("role.rbac.authorization.k8s.io" in kinds) == (mode == "namespaced")
    assert all("(server dry run)" in line for line in applied.splitlines()), applied


def test_install_upgrade_uninstall(dev_cluster, crds, namespace):
    release = release_name()
    account = f"system:serviceaccount:{namespace}:{release}"
    store_secret(dev_cluster, namespace)
    notes = dev_cluster.helm("install", release, str(CHART), "-n", namespace, *S3_STORE, "--wait",
                             "--timeout=120s", timeout=180)
    # NOTES.txt: the next steps, and the CRD upgrade Helm will not do.
    assert f"kubectl -n {namespace} rollout status deployment/{release}" in notes
    assert f"kubectl apply -n {namespace} -f examples/keras-cpu.yaml" in notes and "kubectl get md" in notes
    assert "kubectl apply --server-side --force-conflicts -f charts/trtop/crds/" in notes
    dep = deployment(dev_cluster, namespace, release)
    assert dep["status"]["readyReplicas"] == 1
    for kind in ("serviceaccount", "service"):
        dev_cluster.kubectl("get", kind, "-n", namespace, "-l", f"{names.LABEL_INSTANCE}={release}", "-o", "name")
    assert dev_cluster.get("clusterkopfpeering", release)["metadata"]["labels"][names.LABEL_INSTANCE] == release
    # Cluster-wide RBAC, checked by the API server itself.
    assert can_i(dev_cluster, account, "patch", "modeldeployments.trtop.io", "default")
    assert can_i(dev_cluster, account, "patch", "modeldeployments.trtop.io", "default", "--subresource=status")
    assert can_i(dev_cluster, account, "create", "jobs.batch", "kube-system")
    assert can_i(dev_cluster, account, "list", "nodes")
    assert can_i(dev_cluster, account, "list", "pods", None, "--all-namespaces")  # GPUs requested cluster-wide
    assert can_i(dev_cluster, account, "update", "modeldeployments.trtop.io", "default", "--subresource=finalizers")
    assert not can_i(dev_cluster, account, "delete", "jobs.batch", "default")
    assert not can_i(dev_cluster, account, "get", "secrets", namespace)
    assert not can_i(dev_cluster, account, "create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert can_i(dev_cluster, account, "create", "events", "default")
    assert not can_i(dev_cluster, account, "patch", "events", "default")  # it only posts Events

    dev_cluster.helm("upgrade", release, str(CHART), "-n", namespace, *S3_STORE, "--set", "replicaCount=2",
                     "--set", "workloads.converterImage=registry.example/converter:2", "--wait", "--timeout=120s",
                     timeout=180)
    dep = deployment(dev_cluster, namespace, release)
    assert dep["spec"]["replicas"] == 2 and dep["status"]["readyReplicas"] == 2
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TRTOP_CONVERTER_IMAGE"] == "registry.example/converter:2"
    assert json.loads(dev_cluster.helm("history", release, "-n", namespace, "-o", "json"))[-1]["revision"] == 2

    dev_cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout=120s", timeout=180)
    selector = f"{names.LABEL_INSTANCE}={release}"
    left = dev_cluster.kubectl("get", "all,serviceaccounts,persistentvolumeclaims,roles,rolebindings,kopfpeerings",
                               "-n", namespace, "-l", selector, "-o", "name")
    left += dev_cluster.kubectl("get", "clusterroles,clusterrolebindings,clusterkopfpeerings", "-l", selector,
                                "-o", "name")
    assert left.strip() == ""
    # Helm never deletes crds/: the API (and every ModelDeployment) survives an uninstall.
    for crd in ("modeldeployments.trtop.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        dev_cluster.kubectl("get", "crd", crd)


@pytest.fixture
def namespaced_release(dev_cluster, crds, namespace, extra_namespaces):
    """A namespaced install in ``namespace`` serving one new namespace; another one is left unserved."""
    served, other = extra_namespaces("served"), extra_namespaces("other")
    release = release_name()
    store_secret(dev_cluster, namespace)
    dev_cluster.helm("install", release, str(CHART), "-n", namespace, *S3_STORE, "--set", "rbac.namespaced=true",
                     "--set", f"watchNamespaces={{{served}}}", "--wait", "--timeout=120s", timeout=180)
    yield SimpleNamespace(namespace=namespace, served=served, other=other, release=release,
                          account=f"system:serviceaccount:{namespace}:{release}")
    # Should a finalizer ever come back (kopf adds one for timers and deletion handlers), a
    # namespace could not go once the test's operator stopped: drop any left.
    for ns in (served, other):
        for md in dev_cluster.kubectl("get", "md", "-n", ns, "-o", "name").split():
            dev_cluster.kubectl("patch", "-n", ns, md, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    dev_cluster.helm("uninstall", release, "-n", namespace, "--wait", timeout=180)


def chart_operator(dev_cluster, install, store: Path, tmp_path: Path, name: str) -> ChartOperator:
    kubeconfig = service_account_kubeconfig(dev_cluster, install.namespace, install.release,
                                            tmp_path / f"{name}.kubeconfig")
    return ChartOperator(deployment(dev_cluster, install.namespace, install.release), kubeconfig, store,
                         tmp_path / f"{name}.log", pod_id=name)


def stop_cleanly(operator: ChartOperator) -> str:
    code = operator.stop()
    log = operator.log()
    assert "Traceback" not in log and "Forbidden" not in log, log[-4000:]
    assert code in (0, -15), log[-2000:]
    return log


def test_namespaced_rbac_denies_other_namespaces(dev_cluster, namespaced_release):
    install = namespaced_release
    for verb, resource, extra in [("create", "jobs.batch", ()), ("patch", "modeldeployments.trtop.io", ()),
                                  ("patch", "modeldeployments.trtop.io", ("--subresource=status",)),
                                  ("patch", "deployments.apps", ()), ("delete", "deployments.apps", ()),
                                  ("create", "services", ()),
                                  ("create", "events", ()), ("patch", "kopfpeerings.kopf.dev", ())]:
        assert can_i(dev_cluster, install.account, verb, resource, install.served, *extra), (verb, resource, extra)
        assert not can_i(dev_cluster, install.account, verb, resource, install.other, *extra), (verb, resource, extra)
    assert not can_i(dev_cluster, install.account, "list", "modeldeployments.trtop.io", install.other)
    assert not can_i(dev_cluster, install.account, "get", "secrets", install.served)
    # The read-only cluster part: nodes, and pods of all namespaces (GPUs requested per node).
    assert can_i(dev_cluster, install.account, "list", "nodes")
    assert not can_i(dev_cluster, install.account, "patch", "nodes")
    assert not can_i(dev_cluster, install.account, "list", "pods", install.other)  # no cluster-wide pod list
    assert not can_i(dev_cluster, install.account, "list", "pods", None, "--all-namespaces")
    assert can_i(dev_cluster, install.account, "list", "pods", install.served)
    assert can_i(dev_cluster, install.account, "update", "modeldeployments.trtop.io", install.served,
                 "--subresource=finalizers")
    for verb, resource in (("delete", "jobs.batch"), ("update", "deployments.apps"), ("delete", "services")):
        assert not can_i(dev_cluster, install.account, verb, resource, install.served), (verb, resource)
    assert not can_i(dev_cluster, install.account, "get", "pods/log", install.other)
    assert not can_i(dev_cluster, install.account, "patch", "clusterkopfpeerings.kopf.dev")


def test_namespaced_operator_serves_its_namespace_and_ignores_others(dev_cluster, namespaced_release, tmp_path):
    install = namespaced_release
    store = tmp_path / "store"
    store.mkdir()
    api, custom = load_clients(dev_cluster.kubeconfig)
    stand_in = ConverterStandIn(api, install.served, store)
    stand_in.start()
    operator = chart_operator(dev_cluster, install, store, tmp_path, "operator").start()
    try:
        for ns in (install.served, install.other):
            dev_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
        dev_cluster.kubectl("wait", "-n", install.served, "--for=condition=Ready", f"md/{EXAMPLE_NAME}",
                            "--timeout=120s", timeout=150)
        ignored = custom.get_namespaced_custom_object(names.GROUP, names.VERSION, install.other, names.PLURAL,
                                                      EXAMPLE_NAME)
        assert not ignored.get("status"), ignored.get("status")
        assert not ignored["metadata"].get("finalizers")
        assert not [a for a in ignored["metadata"].get("annotations", {}) if a.startswith(names.GROUP)]
        assert client.BatchV1Api(api).list_namespaced_job(install.other).items == []
        # Deleting never waits on the operator (no finalizer); owner references clean up.
        dev_cluster.kubectl("delete", "md", EXAMPLE_NAME, "-n", install.served, "--timeout=60s", timeout=90)
    finally:
        stand_in.stop()
        log = stop_cleanly(operator)
    assert "Pausing" not in log


def test_two_replicas_one_works_the_other_takes_over(dev_cluster, namespaced_release, tmp_path):
    """Replicas peer through the chart's KopfPeering: the highest priority works, the other waits and takes over."""
    install = namespaced_release
    store = tmp_path / "store"
    store.mkdir()
    api, _ = load_clients(dev_cluster.kubeconfig)
    stand_in = ConverterStandIn(api, install.served, store)
    stand_in.start()
    replicas = {name: chart_operator(dev_cluster, install, store, tmp_path, name).start()
                for name in ("replica-0", "replica-1")}
    try:
        peers = wait_for("both replicas in the KopfPeering", lambda: (status := dev_cluster.get(
            "kopfpeering", install.release, "-n", install.served).get("status") or {}).keys() >= replicas.keys()
            and status, timeout=60)
        # --priority=random gave each its own priority: the highest works, the other pauses.
        ranked = sorted(replicas, key=lambda name: peers[name]["priority"], reverse=True)
        assert peers[ranked[0]]["priority"] != peers[ranked[1]]["priority"]
        active, standby = replicas[ranked[0]], replicas[ranked[1]]
        dev_cluster.kubectl("apply", "-n", install.served, "-f", str(EXAMPLE))
        dev_cluster.kubectl("wait", "-n", install.served, "--for=condition=Ready", f"md/{EXAMPLE_NAME}",
                            "--timeout=120s", timeout=150)
        assert EXAMPLE_NAME not in standby.log(), "the paused standby reconciled too"
        assert EXAMPLE_NAME in active.log()

        resumed = standby.log().count("Resuming operations")
        stop_cleanly(active)  # SIGTERM: kopf takes itself out of the peering on the way out
        wait_for("the standby to resume", lambda: standby.log().count("Resuming operations") > resumed, timeout=60)
        second = yaml.safe_load(EXAMPLE.read_text())
        second["metadata"]["name"] = f"{EXAMPLE_NAME}-2"
        dev_cluster.kubectl("apply", "-n", install.served, "-f", "-", input=yaml.safe_dump(second))
        dev_cluster.kubectl("wait", "-n", install.served, "--for=condition=Ready", f"md/{EXAMPLE_NAME}-2",
                            "--timeout=120s", timeout=150)
        # Its log line follows the status write (and Ready) by a moment.
        wait_for("the standby's log to name it", lambda: f"{EXAMPLE_NAME}-2" in standby.log(), timeout=30)
        dev_cluster.kubectl("delete", "md", "--all", "-n", install.served, "--timeout=60s", timeout=90)
    finally:
        stand_in.stop()
        for replica in replicas.values():
            replica.stop()
    stop_cleanly(standby)


def test_apply_k_gives_the_same_running_operator(dev_cluster, crds, render, tmp_path):
    rendered = next(o for o in render() if o["kind"] == "Deployment")
    # The default install's claim, bound by hand: kwok clusters have no storage provisioner.
    volume = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": f"trtop-engines-{secrets.token_hex(3)}"},
              "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteMany"],
                       "hostPath": {"path": str(tmp_path)}, "persistentVolumeReclaimPolicy": "Retain",
                       "claimRef": {"namespace": NAMESPACE, "name": "trtop-engines"}}}
    dev_cluster.apply(volume)
    try:
        dev_cluster.kubectl("apply", "--server-side", "-k", str(ROOT / "deploy" / "cluster-wide"))
        dev_cluster.kubectl("rollout", "status", "deployment/trtop", "-n", NAMESPACE, "--timeout=120s", timeout=150)
        live = deployment(dev_cluster, NAMESPACE, "trtop")
        container = live["spec"]["template"]["spec"]["containers"][0]
        want = rendered["spec"]["template"]["spec"]["containers"][0]
        for field in ("image", "command", "args", "ports", "securityContext", "volumeMounts"):
            assert container[field] == want[field], field
        assert env_of(container) == env_of(want)
        assert live["status"]["availableReplicas"] == 1
        assert dev_cluster.get("clusterkopfpeering", "trtop")["metadata"]["name"] == "trtop"
    finally:
        # Not the CRDs: other tests (and ModelDeployments) keep using them.
        dev_cluster.kubectl("delete", "-f", str(ROOT / "deploy" / "cluster-wide" / "trtop.yaml"),
                            "--ignore-not-found", "--wait=false")
        dev_cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=90s", timeout=120)
        dev_cluster.kubectl("delete", "persistentvolume", volume["metadata"]["name"], "--ignore-not-found",
                            "--wait=false")
