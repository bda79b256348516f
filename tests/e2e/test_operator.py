"""The operator end to end on the dev cluster, driven the way users drive it (`kubectl apply -f`).

Real kube-apiserver/etcd/controller-manager/scheduler, kwok GPU nodes, the real operator
process; the converter's part is played by ConverterStandIn (see operator_harness.py).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from trtop import names, versions

from .operator_harness import (
    ConverterStandIn, OperatorProcess, condition, dump, get_md, load_clients, wait_events, wait_for,
)

pytestmark = pytest.mark.e2e
L4 = "8.9/NVIDIA-L4"


@pytest.fixture
def world(dev_cluster, namespace, tmp_path):
    """(operator, stand-in, clients, apply) for one namespace; the operator is stopped cleanly after."""
    store = tmp_path / "store"
    store.mkdir()
    api, custom = load_clients(dev_cluster.kubeconfig)
    stand_in = ConverterStandIn(api, namespace, store)
    stand_in.start()
    op = OperatorProcess(dev_cluster.kubeconfig, namespace, store, tmp_path / "operator.log").start()

    class World:
        operator = op
        converter = stand_in
        core = client.CoreV1Api(api)
        apps = client.AppsV1Api(api)
        batch = client.BatchV1Api(api)
        ns = namespace

        def apply(self, name: str, spec: dict) -> None:
            manifest = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": name},
                        "spec": spec}
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(manifest))
            dev_cluster.kubectl("apply", "-n", namespace, "-f", str(path))

        def md(self, name: str) -> dict:
            return get_md(custom, namespace, name)

        def jobs(self) -> list:
            sel = f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}"
            return self.batch.list_namespaced_job(namespace, label_selector=sel).items

        def wait_condition(self, name: str, type_: str, status: str = "True", timeout: float = 90) -> dict:
            return wait_for(f"{type_}={status} on md/{name}", lambda: (
                (md := self.md(name)) and condition(md, type_).get("status") == status
                and md["status"].get("observedGeneration") == md["metadata"]["generation"] and md), timeout=timeout)

        def units(self, name: str) -> list:
            """The serving units (one Deployment per GPU architecture) of md/``name``, by target slug."""
            sel = f"{names.LABEL_MODEL_DEPLOYMENT}={name},{names.LABEL_TARGET}"
            return sorted(self.apps.list_namespaced_deployment(namespace, label_selector=sel).items,
                          key=lambda d: d.metadata.labels[names.LABEL_TARGET])

        def wait_every_unit(self, name: str, cluster) -> list:
            """Ready comes with the capacity asked for, which the fastest unit may carry alone
            while other architectures' engines still build: wait for one unit per GPU type."""
            n = len(gpu_types(cluster))
            return wait_for(f"{n} units of md/{name}", lambda: len(u := self.units(name)) == n and u, timeout=90)

        def unit_products(self, name: str) -> set:
            """GPU products the units of md/``name`` admit (each unit: one node term, one architecture)."""
            out = set()
            for d in self.units(name):
                (term,) = d.spec.template.spec.affinity.node_affinity \
                    .required_during_scheduling_ignored_during_execution.node_selector_terms
                out |= {e.values[0] for e in term.match_expressions if e.key == names.GFD_PRODUCT}
            return out

    yield World()
    stand_in.stop()
    code = op.stop()
    log = op.log()
    assert "Traceback" not in log, log[-4000:]
    assert code in (0, -15), f"operator exit code {code}: {log[-2000:]}"


def gpu_spec(**engine) -> dict:
    return {
        "model": {"uri": "s3://models/resnet50", "format": "savedmodel"},
        "engine": {"batch": {"min": 1, "opt": 4, "max": 16}, "backoffLimit": 0,
                   "podAnnotations": {names.ANNOTATION_KWOK_COMPLETE_AFTER: "3s"}, **engine},
        "scaling": {"mode": "none"},
        "replicas": 2,
    }


def gpu_types(dev_cluster) -> set[str]:
    nodes = client.CoreV1Api(load_clients(dev_cluster.kubeconfig)[0]).list_node().items
    return {f"{n.metadata.labels[names.GFD_CC_MAJOR]}.{n.metadata.labels[names.GFD_CC_MINOR]}/"
            f"{n.metadata.labels[names.GFD_PRODUCT]}" for n in nodes if names.GFD_CC_MAJOR in (n.metadata.labels or {})}


def test_one_build_per_architecture_then_ready(world, dev_cluster):
    world.apply("resnet", gpu_spec())
    archs = gpu_types(dev_cluster)
    assert len(archs) >= 3
    dev_cluster.kubectl("wait", "-n", world.ns, "--for=condition=Ready", "md/resnet", "--timeout=120s")
    # Ready may come while one architecture still builds (P11): wait for every engine and unit,
    # and for the rollout to settle, before counting them.
    world.wait_every_unit("resnet", dev_cluster)
    md = world.wait_condition("resnet", "EnginesReady")
    md = wait_for("the rollout settled", lambda: (m := world.md("resnet")) and condition(m, "Reconciling").get(
        "status") == "False" and condition(m, "Ready").get("status") == "True" and m, timeout=90)
    assert md["status"]["enginesReady"] == f"{len(archs)}/{len(archs)}"
    assert {e["target"] for e in md["status"]["engines"]} == archs
    assert len(world.jobs()) == len(archs) == len(world.converter.seen)
    assert len(world.units("resnet")) == len(archs) == len(world.unit_products("resnet"))  # one unit per architecture
    # The operator counts ready pods from its pod watch; a Deployment's readyReplicas comes later,
    # once the controller-manager's ReplicaSet and Deployment controllers have synced (seconds on a
    # loaded machine): wait for them to agree rather than read both at one instant.
    assert md["status"]["readyReplicas"] == 2
    def ready_units() -> list:
        units = world.units("resnet")
        return units if sum(d.status.ready_replicas or 0 for d in units) == 2 else []

    units = wait_for("the units' Deployments report 2 ready replicas", ready_units, timeout=60)
    assert {u["name"] for u in md["status"]["units"]} == {d.metadata.name for d in units}
    pods = world.core.list_namespaced_pod(world.ns, label_selector=md["status"]["selector"]).items
    nodes = {n.metadata.name: n for n in world.core.list_node().items}
    assert pods and all(names.GFD_CC_MAJOR in nodes[p.spec.node_name].metadata.labels for p in pods)
    # One Event per reconcile that changed something.
    events = wait_events(world.core, world.ns, "resnet", lambda evs: any(
        e.reason == "PhaseReady" for e in evs), "a PhaseReady Event")
    assert any("Ready (built in" in e.message for e in events), [e.message for e in events]
    # kubectl shows the printer columns people read.
    table = dev_cluster.kubectl("get", "md", "-n", world.ns, "resnet")
    assert "Ready" in table and f"{len(archs)}/{len(archs)}" in table
    metrics = world.operator.metrics()
    assert "trtop_operator_builds_total" in metrics and "trtop_operator_reconciles_total" in metrics


def test_new_gpu_type_joins_one_new_build_and_wider_affinity(world, dev_cluster):
    world.apply("resnet", gpu_spec())
    world.wait_condition("resnet", "Ready")
    world.wait_every_unit("resnet", dev_cluster)
    jobs_before = {j.metadata.name: j.metadata.uid for j in world.jobs()}
    units_before = {d.metadata.name: d.metadata.generation for d in world.units("resnet")}
    dev_cluster.add_node("t4-0", {
        names.GFD_PRODUCT: "Tesla-T4", names.GFD_CC_MAJOR: "7", names.GFD_CC_MINOR: "5",
        names.GFD_FAMILY: "turing", names.GFD_COUNT: "4", names.GFD_MEMORY: "15360"}, gpus=4)
    try:
        wait_for("a T4 build Job", lambda: len(world.jobs()) == len(jobs_before) + 1, timeout=60)
        wait_for("a T4 unit", lambda: len(world.units("resnet")) == len(units_before) + 1, timeout=60)
        jobs_after = {j.metadata.name: j.metadata.uid for j in world.jobs()}
        assert {k: jobs_after[k] for k in jobs_before} == jobs_before  # the others were not rebuilt
        after = {d.metadata.name: d.metadata.generation for d in world.units("resnet")}
        assert {k: after[k] for k in units_before} == units_before  # the other units were not changed
        # Ready alone does not say the T4 engine is built: the other units already serve the
        # capacity asked for (P11), so wait for the engine itself, then for Ready.
        wait_for("the T4 engine Ready", lambda: any(
            e["target"] == "7.5/Tesla-T4" and e["state"] == "Ready"
            for e in world.md("resnet").get("status", {}).get("engines", [])), timeout=120)
        world.wait_condition("resnet", "Ready")
    finally:
        dev_cluster.delete_node("t4-0")


def test_build_failure_on_one_architecture_degrades_but_serves(world, dev_cluster):
    world.converter.fail_targets.add(L4)
    world.apply("resnet", gpu_spec())
    md = wait_for("L4 engine Failed", lambda: (m := world.md("resnet")) and any(
        e["target"] == L4 and e["state"] == "Failed" for e in m.get("status", {}).get("engines", [])) and m, timeout=90)
    # The failure's Warning is written at once (Degraded while the rollout of the others
    # may still run: phase Progressing); the phase settles once serving has rolled out.
    md = wait_for("phase Degraded", lambda: (m := world.md("resnet")) and m.get("status", {}).get(
        "phase") == "Degraded" and m, timeout=90)
    assert condition(md, "Available")["status"] == "True"
    failed = next(e for e in md["status"]["engines"] if e["target"] == L4)
    assert "exit code 1" in failed["message"] or "BackoffLimitExceeded" in failed["message"], dump(failed)
    assert L4 in condition(md, "EnginesReady")["message"]
    products = world.unit_products("resnet")
    assert "NVIDIA-L4" not in products and len(products) >= 2
    wait_events(world.core, world.ns, "resnet", lambda evs: any(
        e.type == "Warning" and e.reason == "EngineFailed" for e in evs), "an EngineFailed Warning")


def test_model_update_builds_new_engines_first_then_rolls(world, dev_cluster):
    world.apply("resnet", gpu_spec())
    world.wait_condition("resnet", "Ready")
    # Ready may come while one architecture still builds (P11): an engine that never served
    # is not a previous engine, so let every architecture build and roll out first.
    world.wait_every_unit("resnet", dev_cluster)
    old = wait_for("every engine Ready", lambda: (m := world.md("resnet")) and m["status"].get("engines") and all(
        e["state"] == "Ready" for e in m["status"]["engines"]) and m, timeout=90)
    old_keys = {e["key"] for e in old["status"]["engines"]}
    old_revision = old["status"]["modelRevision"]
    world.converter.hold.set()
    spec = gpu_spec()
    spec["model"]["uri"] = "s3://models/resnet50-v2"
    world.apply("resnet", spec)
    wait_for("new build Jobs", lambda: len(world.jobs()) == 2 * len(old_keys), timeout=60)
    time.sleep(3)  # several reconciles while the new engines build
    units = world.units("resnet")
    assert units and {d.metadata.annotations[names.ANNOTATION_SPEC_HASH] for d in units} == {old_revision}
    md = world.md("resnet")
    assert condition(md, "Reconciling")["status"] == "True"
    assert "previous model revision" in condition(md, "Reconciling")["message"]
    world.converter.hold.clear()
    md = world.wait_condition("resnet", "Ready")
    revisions = {d.metadata.annotations[names.ANNOTATION_SPEC_HASH] for d in world.units("resnet")}
    assert revisions == {md["status"]["modelRevision"]} and old_revision not in revisions
    assert set(md["status"]["previousEngines"]) == old_keys  # kept for rollback


def test_operator_killed_mid_build_restarts_without_duplicates(world, dev_cluster):
    world.converter.hold.set()
    world.apply("resnet", gpu_spec())
    wait_for("build Jobs", lambda: len(world.jobs()) >= 3, timeout=60)
    before = sorted((j.metadata.name, j.metadata.uid) for j in world.jobs())
    world.operator.kill()
    world.operator.start()
    time.sleep(4)  # the restarted operator reconciles several times
    assert sorted((j.metadata.name, j.metadata.uid) for j in world.jobs()) == before
    world.converter.hold.clear()
    world.wait_condition("resnet", "Ready")
    assert sorted((j.metadata.name, j.metadata.uid) for j in world.jobs()) == before


def test_delete_leaves_nothing_behind(world, dev_cluster):
    world.apply("resnet", gpu_spec())
    world.wait_condition("resnet", "Ready")
    dev_cluster.kubectl("delete", "-n", world.ns, "md/resnet", "--wait=true", "--timeout=60s")
    sel = f"{names.LABEL_MODEL_DEPLOYMENT}=resnet"

    def leftovers() -> list:
        return (world.batch.list_namespaced_job(world.ns, label_selector=sel).items
                + world.apps.list_namespaced_deployment(world.ns, label_selector=sel).items
                + world.core.list_namespaced_service(world.ns, label_selector=sel).items)
    wait_for("garbage collection of Jobs, Deployment, Service", lambda: not leftovers(), timeout=90)


@pytest.mark.parametrize("spec,fragment", [
    ({"model": {"uri": "ftp://models/x"}}, "model.uri must start with"),
    ({"model": {"uri": "s3://m/x", "format": "pickle"}}, "Unsupported value"),
    ({"model": {"uri": "s3://m/x"}, "engine": {"batch": {"min": 8, "opt": 2, "max": 4}}}, "min <= opt <= max"),
    ({"model": {"uri": "s3://m/x"}, "scaling": {"minReplicas": 5, "maxReplicas": 1}}, "minReplicas must be <="),
    ({"model": {"uri": "s3://m/x"}, "engine": {"targets": ["hopper"]}}, "should match"),
    ({"model": {"uri": "s3://m/x", "format": "onnx"}, "engine": {"method": "tf-trt"}}, "needs method onnx"),
    ({"engine": {}}, "model: Required value"),
    ({"model": {"uri": "s3://m/x"}, "rollout": {"maxSurge": "0", "maxUnavailable": "0"}}, "cannot both be 0"),
    ({"model": {"uri": "s3://m/x"}, "rollout": {"maxSurge": "lots"}}, "should match"),
    ({"model": {"uri": "s3://m/x"}, "serving": {"resources": {"limits": {"cpu": "lots"}}}}, "should match"),
    ({"model": {"uri": "s3://m/x"}, "serving": {"env": [{"name": "TRTOP_ENGINE_SET", "value": "[]"}]}},
     "set by trtop"),
    ({"model": {"uri": "s3://m/x"}, "engine": {"podLabels": {"job-name": "x"}}}, "Job/Deployment controllers"),
    ({"model": {"uri": "s3://m/x"}, "serving": {"sharedMemory": "cuda"}}, "Unsupported value"),
    ({"model": {"uri": "s3://m/x"}, "serving": {"httpFrontend": "go"}}, "Unsupported value"),
    ({"model": {"uri": "s3://m/x"}, "serving": {"sidecars": [{"name": "server", "image": "i"}]}},
     "the server container's"),
    ({"model": {"uri": "s3://m/x"}, "serving": {"sidecars": [{"name": "pre", "image": "i", "env": [
        {"name": "TRTOP_STORE_URI", "value": "/"}]}]}}, "trtop's own"),
    # Fields a sidecar may not have are not silently dropped: kubectl's strict validation names them.
    ({"model": {"uri": "s3://m/x"}, "serving": {"sidecars": [{"name": "pre", "image": "i", "securityContext": {
        "privileged": True}}]}}, 'unknown field "spec.serving.sidecars[0].securityContext"'),
])
def test_malformed_specs_are_rejected_by_the_api_server(dev_cluster, namespace, tmp_path, spec, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": names.API_VERSION, "kind": names.KIND,
                                    "metadata": {"name": "bad"}, "spec": spec}))
    result = dev_cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0 and fragment in result.stderr, result.stderr


def test_a_spec_with_shared_memory_and_a_sidecar_is_accepted_by_the_api_server(dev_cluster, namespace, tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "pre"},
                                    "spec": {"model": {"uri": "s3://m/x"}, "serving": {
                                        "sharedMemory": "system", "httpFrontend": "native", "sidecars": [{
                                            "name": "pre", "image": "registry.example.com/pre:1", "args": ["-v"],
                                            "env": [{"name": "MODE", "value": "fast"}],
                                            "ports": [{"name": "metrics", "containerPort": 9100}],
                                            "resources": {"limits": {"cpu": "500m"}}}]}}}))
    result = dev_cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-n", namespace, "-f", str(path),
                                 check=False)
    assert result.returncode == 0, result.stderr
    serving = json.loads(result.stdout)["spec"]["serving"]
    assert serving["sharedMemory"] == "system" and serving["sidecars"][0]["ports"][0]["containerPort"] == 9100
    assert serving["httpFrontend"] == "native"


def test_sidecars_join_the_units_pods_and_a_foreign_sidecar_image_is_refused(world):
    """Through the operator and the API server: a sidecar of an allowed image (trtop's own here; the
    operator runs with no workloads.allowedImages) is in every unit's pods beside a server that has
    shared memory on; one of any other image stalls its ModelDeployment, naming the field."""
    sidecar = {"name": "pre", "image": versions.SERVER_CPU_IMAGE, "command": ["sleep", "infinity"]}
    world.apply("pre", {**gpu_spec(), "serving": {"sharedMemory": "system", "sidecars": [sidecar]}})
    world.apply("foreign", {**gpu_spec(), "serving": {"sidecars": [{**sidecar, "image": "docker.io/library/busybox"}]}})
    units = wait_for("units of md/pre", lambda: world.units("pre"), timeout=120)
    for unit in units:
        server, pre = unit.spec.template.spec.containers
        assert server.command[server.command.index("--shared-memory") + 1] == "system"
        assert pre.name == "pre" and pre.image == versions.SERVER_CPU_IMAGE and pre.command == ["sleep", "infinity"]
        assert pre.security_context.read_only_root_filesystem and not pre.env_from
        assert [m.name for m in pre.volume_mounts] == ["sidecar-tmp"]
    stalled = condition(world.wait_condition("foreign", "Stalled"), "Stalled")
    assert stalled["reason"] == "InvalidSpec" and "serving.sidecars[0].image" in stalled["message"], stalled
    assert not world.units("foreign")


def test_spec_errors_the_schema_cannot_catch_become_stalled(world):
    # (A builder image the platform does not allow: only the operator knows its list. Errors the schema
    # can catch, such as a zero input dimension, are refused by kubectl apply: tests/api/test_crd.py.)
    world.apply("image", {"model": {"uri": "s3://m/x"}, "engine": {"builderImage": "evil.example.com/miner:1"}})
    md = world.wait_condition("image", "Stalled")
    assert condition(md, "Stalled")["reason"] == "InvalidSpec"
    assert "engine.builderImage" in condition(md, "Stalled")["message"]
    assert not world.jobs()
    wait_events(world.core, world.ns, "image", lambda evs: any(e.reason == "InvalidSpec" for e in evs),
                "an InvalidSpec Event")
    world.apply("image", {"model": {"uri": "s3://m/x"}})  # the fix recovers
    wait_for("Stalled cleared", lambda: condition(world.md("image"), "Stalled").get("reason") != "InvalidSpec")
    # minReplicas 0 with the builtin autoscaler: the API server takes it (another operator may have a wake query);
    # this one has none, so nothing would scale it up again from zero.
    world.apply("zero", {"model": {"uri": "s3://m/x"}, "scaling": {"minReplicas": 0}})
    stalled = condition(world.wait_condition("zero", "Stalled"), "Stalled")
    assert stalled["reason"] == "InvalidSpec" and "operator.wakeQuery" in stalled["message"], stalled


@pytest.mark.parametrize("name", ["res.net", "r" * 100, "1st"])
def test_names_that_cannot_name_children_are_rejected_by_the_api_server(dev_cluster, namespace, tmp_path, name):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": names.API_VERSION, "kind": names.KIND,
                                    "metadata": {"name": name}, "spec": {"model": {"uri": "s3://m/x"}}}))
    result = dev_cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0 and "names the Service and Deployment" in result.stderr, result.stderr


def test_a_refused_object_is_stalled_with_the_servers_message_and_others_carry_on(world):
    """A 422 from the API server (an annotation key it refuses) ends as Stalled, once, with its
    words; a neighbour with overlapping targets (auto + 8.9) is served; no traceback (fixture)."""
    bad = gpu_spec()
    bad["serving"] = {"podAnnotations": {"not a key!": "x"}}
    world.apply("rejected", bad)
    world.apply("overlap", gpu_spec(targets=["auto", "8.9"]))
    md = world.wait_condition("rejected", "Stalled", timeout=120)
    stalled = condition(md, "Stalled")
    assert stalled["reason"] == "ApplyRejected" and "not a key!" in stalled["message"], dump(stalled)
    wait_events(world.core, world.ns, "rejected", lambda evs: any(e.reason == "ApplyRejected" for e in evs),
                "an ApplyRejected Event")
    world.wait_condition("overlap", "Ready", timeout=120)
    fixed = gpu_spec()
    fixed["serving"] = {"podAnnotations": {"team": "ml"}}
    world.apply("rejected", fixed)  # the fix recovers
    world.wait_condition("rejected", "Ready", timeout=120)


def test_an_object_trtop_does_not_control_is_never_taken_over(world, dev_cluster):
    theirs = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "namespace": world.ns,
                                                                  "labels": {"team": "web"}},
              "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    world.core.create_namespaced_service(world.ns, theirs)
    world.apply("taken", gpu_spec())
    md = world.wait_condition("taken", "Stalled", timeout=90)
    assert condition(md, "Stalled")["reason"] == "NotOwned" and "Service" in condition(md, "Stalled")["message"]
    svc = world.core.read_namespaced_service("taken", world.ns)
    assert svc.spec.selector == {"app": "web"} and not svc.metadata.owner_references
    assert world.units("taken") == []


def test_a_cordoned_gpu_type_stays_served_within_the_grace_period(world, dev_cluster):
    world.apply("resnet", gpu_spec())
    world.wait_condition("resnet", "Ready")
    # Ready comes with the capacity asked for, which the fastest unit may carry alone while the
    # other architectures' engines still build; compare only once every architecture has its unit.
    world.wait_every_unit("resnet", dev_cluster)
    before = {d.metadata.name: d.metadata.generation for d in world.units("resnet")}
    nodes = [n.metadata.name for n in world.core.list_node().items
             if (n.metadata.labels or {}).get(names.GFD_PRODUCT) == "NVIDIA-L4"]
    assert nodes
    try:
        for n in nodes:
            dev_cluster.kubectl("cordon", n)
        time.sleep(5)
        assert {d.metadata.name: d.metadata.generation for d in world.units("resnet")} == before  # no change
        assert L4 in world.md("resnet")["status"]["targets"]
    finally:
        for n in nodes:
            dev_cluster.kubectl("uncordon", n)
