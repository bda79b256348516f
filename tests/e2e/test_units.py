"""Serving units on the dev cluster: GPU types join and leave without touching anyone else.

The real operator and control plane, kwok GPU pools sized so that the capacity split puts
pods on several architectures, the converter's stand-in. A watcher polls every
ModelDeployment's Ready condition for the whole test: it must never drop.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from trtop import names
from trtop.config import Settings
from trtop_dev.devcluster.pools import Gpu, Pool
from trtop.k8s.observe import node_fact
from trtop.planning.facts import ClusterFacts
from trtop.planning.plan import plan_model_deployment

from .operator_harness import (
    ConverterStandIn, OperatorProcess, condition, events_for, get_md, load_clients, publish_fake_engine, wait_for,
)

pytestmark = pytest.mark.e2e
GRACE = "3"  # seconds a cordoned node keeps its GPU type (the operator's TRTOP_NODE_GRACE_SECONDS)


# This module's nodes take only pods that tolerate this taint (its ModelDeployments' pods). Earlier tests' pods
# in namespaces still being deleted, or a ReplicaSet recreating pods of the default pools' nodes when this module
# replaced them, could otherwise take these nodes' GPUs; the operator under test watches one namespace and cannot
# see them, so its split would place pods where no GPU is free and move them again: not the join it tests.
TAINT = {"key": "trtop.io/e2e-units", "value": "only", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"], "effect": TAINT["effect"]}


def pool(name: str, product: str, cc: str, gpus: int) -> Pool:
    return Pool(name=name, count=1, cpu="64", memory="512Gi", taints=(TAINT,), gpu=Gpu(product, cc, gpus))


POOLS = [pool("u-h100", "NVIDIA-H100-80GB-HBM3", "9.0", 2), pool("u-a100", "NVIDIA-A100-SXM4-80GB", "8.0", 2),
         pool("u-l4", "NVIDIA-L4", "8.9", 3)]
B200 = pool("u-b200", "NVIDIA-B200", "10.0", 4)


def spec(replicas: int) -> dict:
    return {"model": {"uri": "s3://models/resnet50", "format": "savedmodel"},
            "engine": {"batch": {"min": 1, "opt": 4, "max": 16}, "tolerations": [TOLERATION],
                       "podAnnotations": {names.ANNOTATION_KWOK_COMPLETE_AFTER: "1s"}},
            "serving": {"tolerations": [TOLERATION]}, "scaling": {"mode": "none"}, "replicas": replicas}


class ReadyWatch(threading.Thread):
    """Polls Ready of the named ModelDeployments; remembers every reading that was not True."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str, md_names: list[str]) -> None:
        super().__init__(daemon=True)
        self.custom, self.namespace, self.names = custom, namespace, md_names
        self.drops: list[tuple[str, dict]] = []
        self.readings = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.25):
            for name in self.names:
                try:
                    ready = condition(get_md(self.custom, self.namespace, name), names.COND_READY)
                except Exception:  # noqa: BLE001 - an API hiccup is not a Ready drop
                    continue
                self.readings += 1
                if ready.get("status") != "True":
                    self.drops.append((name, ready))

    def covering(self) -> ReadyWatch:
        """Started, with a reading taken: what follows happens under the watch (a fast change may take
        only a few polls, so their number says nothing; that the watch spans the change does)."""
        self.start()
        self._after(0)
        return self

    def stop(self) -> None:
        """After one more full reading (the state the change ended in is read too), stop."""
        self._after(self.readings + len(self.names))
        self._halt.set()
        self.join(5)

    def _after(self, readings: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.readings <= readings and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)
        assert self.readings > readings, "the Ready watch took no readings (API unreachable?)"


@pytest.fixture(scope="module")
def unit_pools(dev_cluster) -> Iterator[None]:
    """Exactly POOLS for this module's tests (the default pools come back after)."""
    with dev_cluster.pools(POOLS):
        yield


@pytest.fixture
def cluster(unit_pools, dev_cluster, namespace, tmp_path) -> Iterator[dict]:
    """The operator and the stand-in for one namespace; the pools as POOLS again afterwards."""
    store = tmp_path / "store"
    store.mkdir()
    api, custom = load_clients(dev_cluster.kubeconfig)
    stand_in = ConverterStandIn(api, namespace, store)
    stand_in.start()
    # Started by the test (``cluster["operator"].start()``): one may lay down state first.
    op = OperatorProcess(dev_cluster.kubeconfig, namespace, store, tmp_path / "operator.log",
                         TRTOP_NODE_GRACE_SECONDS=GRACE)
    try:
        yield {"api": api, "custom": custom, "core": client.CoreV1Api(api), "apps": client.AppsV1Api(api),
               "store": store, "operator": op}
    finally:
        stand_in.stop()
        code = op.stop()
        dev_cluster.delete_node(B200.node_names()[0])
        dev_cluster.kubectl("uncordon", *(p.node_names()[0] for p in POOLS))
        assert "Traceback" not in op.log(), op.log()[-4000:]
        assert code in (0, -15), op.log()[-2000:]


def apply_md(dev_cluster, namespace: str, tmp_path: Path, name: str, body: dict) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": names.API_VERSION, "kind": names.KIND,
                                    "metadata": {"name": name}, "spec": body}))
    dev_cluster.kubectl("apply", "-n", namespace, "-f", str(path))


def inference_pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    """Every serving pod of the namespace, leaving ones too."""
    return core.list_namespaced_pod(
        namespace, label_selector=f"{names.LABEL_COMPONENT}={names.COMPONENT_INFERENCE}").items


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def serving_pods(core: client.CoreV1Api, namespace: str,
                 pods: list[client.V1Pod] | None = None) -> dict[str, tuple[str, str]]:
    """uid -> (unit target slug, node) of every live serving pod (of ``pods`` when given)."""
    return {p.metadata.uid: ((p.metadata.labels or {}).get(names.LABEL_TARGET, ""), p.spec.node_name or "")
            for p in (inference_pods(core, namespace) if pods is None else pods) if not p.metadata.deletion_timestamp}


def at_rest(core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str) -> dict[str, tuple[str, str]] | None:
    """The serving pods (as ``serving_pods``) once every unit has exactly its replicas, all bound and ready,
    none leaving; else None. Ready can be True while a pod that lost its GPU to a race waits to be placed
    again (the capacity asked for is carried): what moves then is that settling, not what a test does next."""
    pods = inference_pods(core, namespace)
    if any(p.metadata.deletion_timestamp or not p.spec.node_name or not is_ready(p) for p in pods):
        return None
    units = apps.list_namespaced_deployment(namespace).items
    want = [d.spec.replicas or 0 for d in units]
    if [(d.status.ready_replicas or 0, d.status.replicas or 0) for d in units] != [(w, w) for w in want] or (
            sum(want) != len(pods)):
        return None
    return serving_pods(core, namespace, pods)


def placement(core: client.CoreV1Api, custom, namespace: str) -> str:
    """What a failed placement assertion shows: every pod on a GPU node of this module, any namespace, and
    each ModelDeployment's units."""
    ours = {n for p in [*POOLS, B200] for n in p.node_names()}
    pods = [f"{p.metadata.namespace}/{p.metadata.name} {p.spec.node_name} {p.status.phase}"
            f"{' deleting' if p.metadata.deletion_timestamp else ''}"
            for p in core.list_pod_for_all_namespaces().items if p.spec.node_name in ours]
    units = {n: [(u["name"], u["replicas"], u["readyReplicas"]) for u in get_md(custom, namespace, n)["status"].get(
        "units", [])] for n in ("big", "small")}
    return f"pods on this module's nodes: {pods}; units: {units}"


def ready_md(custom, namespace: str, name: str, timeout: float = 90) -> dict:
    return wait_for(f"md/{name} Ready", lambda: (
        (md := get_md(custom, namespace, name)) and condition(md, names.COND_READY).get("status") == "True"
        and md["status"].get("readyReplicas") == md["status"].get("desiredReplicas") and md), timeout=timeout)


def test_a_gpu_type_joining_or_leaving_replaces_no_pod_of_another_unit(cluster, dev_cluster, namespace, tmp_path):
    core, apps, custom = cluster["core"], cluster["apps"], cluster["custom"]
    cluster["operator"].start()
    # Equal throughput (the stand-in's benchmark) fills the newest architecture with room first:
    # big -> H100 x2 + L4 x2; small (once big's pods hold their GPUs) -> L4 x1 + A100 x1.
    apply_md(dev_cluster, namespace, tmp_path, "big", spec(4))
    ready_md(custom, namespace, "big")
    apply_md(dev_cluster, namespace, tmp_path, "small", spec(2))
    ready_md(custom, namespace, "small")
    before = wait_for("serving at rest", lambda: at_rest(core, apps, namespace), timeout=60)
    assert {slug for slug, _ in before.values()} >= {"sm90-nvidia-h100-80gb-hbm3", "sm89-nvidia-l4"}, before
    units_before = {d.metadata.name: d.metadata.generation for d in apps.list_namespaced_deployment(namespace).items}
    watch = ReadyWatch(custom, namespace, ["big", "small"]).covering()
    try:
        # A B200 pool joins: one build per ModelDeployment, one new unit each, nobody else touched.
        dev_cluster.apply_pools([B200], prune=False)
        wait_for("a B200 unit per ModelDeployment", lambda: all(
            any(u["target"].startswith("10.0") for u in get_md(custom, namespace, n)["status"].get("units", []))
            for n in ("big", "small")), timeout=90)
        after_join = serving_pods(core, namespace)
        # 0 pods replaced, none added: the asked capacity was carried already
        assert after_join == before, placement(core, custom, namespace)
        generations = {d.metadata.name: d.metadata.generation for d in apps.list_namespaced_deployment(namespace).items}
        assert {k: generations[k] for k in units_before} == units_before  # no other unit changed at all
        # The L4 pool leaves (cordoned past the grace period): the others take its load, then its units go.
        dev_cluster.kubectl("cordon", "u-l4-0")
        l4 = {uid for uid, (slug, _) in before.items() if slug == "sm89-nvidia-l4"}

        def l4_gone() -> bool:
            return not (serving_pods(core, namespace).keys() & l4) and not [
                d for d in apps.list_namespaced_deployment(namespace).items
                if d.metadata.labels.get(names.LABEL_TARGET) == "sm89-nvidia-l4"]
        wait_for("L4 units and pods gone", l4_gone, timeout=120)
        for name in ("big", "small"):
            ready_md(custom, namespace, name)
        after_leave = serving_pods(core, namespace)
        kept = {uid: v for uid, v in before.items() if uid not in l4}
        assert {uid: after_leave.get(uid) for uid in kept} == kept, placement(core, custom, namespace)  # only L4 went
        new = {v for uid, v in after_leave.items() if uid not in before}
        # the load moved to B200
        assert new and all(slug == "sm100-nvidia-b200" for slug, _ in new), (new, placement(core, custom, namespace))
    finally:
        watch.stop()
    assert watch.drops == [], watch.drops[:5]


def test_a_single_deployment_from_before_units_moves_to_units_without_a_drop(cluster, dev_cluster, namespace,
                                                                             tmp_path):
    """What trtop made before units (one Deployment named like the ModelDeployment, its status
    Ready) moves to units: they come up, then the old Deployment goes; Ready holds throughout."""
    core, apps, custom, op = cluster["core"], cluster["apps"], cluster["custom"], cluster["operator"]
    # The "old" operator's state is laid down by hand, then the operator takes over.
    apply_md(dev_cluster, namespace, tmp_path, "old", spec(2))
    md = get_md(custom, namespace, "old")
    nodes = tuple(node_fact(cluster["api"].sanitize_for_serialization(n), 0) for n in core.list_node().items)
    settings = Settings(store_uri=str(cluster["store"]))
    planned = plan_model_deployment(md, ClusterFacts(nodes=nodes), settings, now="2026-12-02T00:00:00Z")
    for e in planned.engines:  # the engines the old Deployment served are in the store
        publish_fake_engine(cluster["store"], e.request)
    served = plan_model_deployment(md, ClusterFacts(nodes=nodes, records=_records(cluster["store"], planned)),
                                   settings, now="2026-12-02T00:00:00Z")
    legacy = served.units[0]  # shaped like the old single Deployment: named like the object, no unit label
    legacy["metadata"]["name"] = "old"
    for labels in (legacy["metadata"]["labels"], legacy["spec"]["template"]["metadata"]["labels"],
                   legacy["spec"]["selector"]["matchLabels"]):
        labels.pop(names.LABEL_TARGET, None)
    legacy["spec"]["replicas"] = 2
    apps.create_namespaced_deployment(namespace, legacy)
    wait_for("the old Deployment ready", lambda: (
        apps.read_namespaced_deployment("old", namespace).status.ready_replicas or 0) == 2, timeout=60)
    up = {names.COND_READY: "True", names.COND_AVAILABLE: "True", names.COND_RECONCILING: "False"}
    conditions = [{**c, "status": up.get(c["type"], c["status"])} for c in served.status["conditions"]]
    ready_status = {**served.status, "conditions": conditions, "phase": "Ready", "desiredReplicas": 2,
                    "replicas": 2, "readyReplicas": 2, "units": []}
    custom.patch_namespaced_custom_object_status(names.GROUP, names.VERSION, namespace, names.PLURAL, "old",
                                                 {"status": ready_status})
    old_pods = set(serving_pods(core, namespace))
    assert condition(get_md(custom, namespace, "old"), names.COND_READY).get("status") == "True"
    watch = ReadyWatch(custom, namespace, ["old"]).covering()
    try:
        op.start()
        wait_for("the old Deployment deleted", lambda: not [
            d for d in apps.list_namespaced_deployment(namespace).items if d.metadata.name == "old"], timeout=90)
        # The operator deletes the old Deployment before it writes the status that lists the units,
        # so the hand-written Ready status (no units) can still be the one read here: wait for the units'.
        md = wait_for("the units carry 2 ready", lambda: (m := ready_md(custom, namespace, "old")) and sum(
            u["readyReplicas"] for u in m["status"].get("units", [])) == 2 and m, timeout=60)
        wait_for("the old pods gone", lambda: not (set(serving_pods(core, namespace)) & old_pods), timeout=60)
    finally:
        watch.stop()
    assert watch.drops == [], watch.drops[:5]
    assert sum(u["readyReplicas"] for u in md["status"]["units"]) == 2
    # The scale subresource (what kubectl scale, an HPA or KEDA use) still drives every unit.
    dev_cluster.kubectl("scale", "-n", namespace, "md/old", "--replicas=3")
    md = wait_for("3 replicas ready", lambda: (m := ready_md(custom, namespace, "old")) and
                  m["status"]["readyReplicas"] == 3 and m, timeout=60)
    scale = dev_cluster.get("md", "old", "-n", namespace, "--subresource=scale")
    assert scale["spec"]["replicas"] == scale["status"]["replicas"] == 3
    pods = core.list_namespaced_pod(namespace, label_selector=scale["status"]["selector"]).items
    assert len({(p.metadata.labels or {}).get(names.LABEL_TARGET) for p in pods}) == 2 and len(pods) == 3  # 2 units


def _records(store: Path, planned) -> dict:
    from trtop.api.engine import EngineRecord
    return {e.key: EngineRecord.from_json((store / e.request.scope / e.key / names.ENGINE_METADATA_FILE).read_text())
            for e in planned.engines}


def test_pods_a_resource_quota_refuses_are_named_in_the_status_until_the_quota_allows_them(
        cluster, dev_cluster, namespace, tmp_path):
    """A namespace's ResourceQuota on GPUs is the platform's cap on what replicas can take (docs/install.md): the
    API server refuses the pods past it, they never exist, and the status says so (ScalingLimited=PodsRefused,
    with the API server's words) instead of a rollout that waits without a reason; once the quota is raised the
    pods come at once, however long the refusal lasted, and it clears."""
    custom = cluster["custom"]
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus", "namespace": namespace},
             "spec": {"hard": {"requests.nvidia.com/gpu": "1"}}}
    body = spec(2)  # the H100 node has two GPUs
    applied, limited = _refused_under(cluster, dev_cluster, namespace, tmp_path, quota, "capped", body)
    assert limited["status"] == "True" and "exceeded quota" in limited["message"], limited
    md = wait_for("the pod the quota allows ready", lambda: (m := get_md(custom, namespace, "capped")) and m[
        "status"].get("readyReplicas") == 1 and m, timeout=60)  # the refusal can come before it is ready
    assert condition(md, names.COND_READY)["status"] == "False"
    assert condition(md, names.COND_SCALING_LIMITED)["reason"] == "PodsRefused"
    events = events_for(cluster["core"], namespace, "capped")
    assert [e for e in events if e.reason == "PodsRefused" and e.type == "Warning"], [e.reason for e in events]
    _lengthen_refusal(cluster["apps"], namespace, "capped", applied)
    # The remedy the message names: the platform raises the quota. The operator sees the new limits and marks the
    # unit (names.ANNOTATION_QUOTA_RETRY); the Deployment controller copies the mark onto the ReplicaSet, which
    # tries again at once: the pods come in seconds, not after the back-off.
    raised = time.monotonic()
    dev_cluster.apply({**quota, "spec": {"hard": {"requests.nvidia.com/gpu": "2"}}}, namespace=namespace)
    wait_for("both ready after the quota was raised", lambda: get_md(custom, namespace, "capped")["status"].get(
        "readyReplicas") == 2, timeout=45)
    print(f"both ready {time.monotonic() - raised:.1f} s after the quota was raised")
    # The Deployment drops its ReplicaFailure once its ReplicaSet's next sync creates what it needs.
    wait_for("ScalingLimited False", lambda: condition(get_md(custom, namespace, "capped"),
                                                       names.COND_SCALING_LIMITED)["status"] == "False", timeout=60)
    assert condition(ready_md(custom, namespace, "capped", timeout=30), names.COND_READY)["status"] == "True"


def _refused_under(cluster, dev_cluster, namespace: str, tmp_path, policy: dict, name: str,
                   body: dict) -> tuple[float, dict]:
    """Apply the namespace's ``policy`` (a quota or a LimitRange), start the operator and apply ``body`` built for
    the H100s alone (one build: the policy is for serving); return when it was applied and the refusal's
    condition."""
    body["engine"]["targets"] = ["9.0"]
    dev_cluster.apply(policy, namespace=namespace)
    cluster["operator"].start()
    applied = time.monotonic()
    apply_md(dev_cluster, namespace, tmp_path, name, body)
    return applied, _wait_refused(cluster["custom"], namespace, name)


def _wait_refused(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict:
    """The ScalingLimited condition once it says PodsRefused."""
    def refused() -> dict | None:
        limited = condition(get_md(custom, namespace, name), names.COND_SCALING_LIMITED)
        return limited if limited.get("reason") == "PodsRefused" else None
    return wait_for("ScalingLimited=PodsRefused", refused, timeout=90)


def _lengthen_refusal(apps: client.AppsV1Api, namespace: str, md_name: str, since: float) -> None:
    """Make a refusal that started at ``since`` one that lasted: the ReplicaSet controller tries again on a back-off
    that doubles from 5 ms up to 1000 s per failure. Each update of the ReplicaSet is an immediate try, refused:
    twenty of them count as twenty minutes of refusals would. The try its back-off had already set keeps its time (a
    work queue keeps the sooner of two), about the refusal's age again from now: once it has come and been refused
    too, the next is 1000 s away. Waiting only that long left the try due at about the moment a test freed the room
    (its pods came 1.1-1.6 s later with the old code, twice): twice that, and the old code gets none in 45 s."""
    (rs,) = [r for r in apps.list_namespaced_replica_set(namespace).items if r.metadata.name.startswith(f"{md_name}-")]
    for i in range(20):
        apps.patch_namespaced_replica_set(rs.metadata.name, namespace,
                                          {"metadata": {"annotations": {"test.trtop.io/try": str(i)}}})
        time.sleep(0.1)
    time.sleep(2 * (time.monotonic() - since) + 2)


def test_pods_a_full_quota_refuses_come_at_once_when_another_workload_frees_it(cluster, dev_cluster, namespace,
                                                                              tmp_path):
    """The usual way a quota frees up: the limits stay, another workload of the namespace (here a plain pod, nothing
    of trtop's) ends and the usage falls. The refused pod is tried again at once (the unit's mark follows the quota's
    room, not only its limits), not after the ReplicaSet's back-off."""
    custom, core = cluster["custom"], cluster["core"]
    body = spec(1)
    body["engine"]["targets"] = ["9.0"]
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus", "namespace": namespace},
             "spec": {"hard": {"requests.nvidia.com/gpu": "2"}}}
    dev_cluster.apply(quota, namespace=namespace)
    hog = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog", "namespace": namespace},
           "spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, "tolerations": [TOLERATION],
                    "containers": [{"name": "job", "image": "busybox",
                                    "resources": {"limits": {names.GPU_RESOURCE: "1"}}}]}}
    dev_cluster.apply(hog, namespace=namespace)
    cluster["operator"].start()
    apply_md(dev_cluster, namespace, tmp_path, "shared", body)
    ready_md(custom, namespace, "shared", timeout=90)  # the build and then the replica, beside the other pod
    applied = time.monotonic()
    apply_md(dev_cluster, namespace, tmp_path, "shared", {**body, "replicas": 2})
    limited = _wait_refused(custom, namespace, "shared")
    assert "exceeded quota" in limited["message"], limited
    _lengthen_refusal(cluster["apps"], namespace, "shared", applied)
    freed = time.monotonic()
    core.delete_namespaced_pod("hog", namespace, grace_period_seconds=0)
    wait_for("both replicas ready after the other pod ended", lambda: get_md(custom, namespace, "shared")[
        "status"].get("readyReplicas") == 2, timeout=45)
    print(f"both ready {time.monotonic() - freed:.1f} s after the other pod ended")


def test_pods_a_limit_range_refuses_come_at_once_when_it_is_raised(cluster, dev_cluster, namespace, tmp_path):
    """A LimitRange refuses pods too (a container's limits past its max): the status says so and, once the platform
    raises the max, the pods come at once, however long the refusal lasted (the unit's trtop.io/quota-retry mark
    digests the namespace's LimitRanges as well as its quotas)."""
    custom = cluster["custom"]
    body = spec(1)
    body["serving"]["resources"] = {"limits": {"cpu": "2"}}  # past the max; the build's one CPU is not
    caps = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "cpus", "namespace": namespace},
            "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}}
    applied, limited = _refused_under(cluster, dev_cluster, namespace, tmp_path, caps, "wide", body)
    assert limited["status"] == "True" and "maximum cpu usage per Container is 1" in limited["message"], limited
    _lengthen_refusal(cluster["apps"], namespace, "wide", applied)
    raised = time.monotonic()
    dev_cluster.apply({**caps, "spec": {"limits": [{"type": "Container", "max": {"cpu": "4"}}]}}, namespace=namespace)
    wait_for("the replica ready after the LimitRange was raised", lambda: get_md(custom, namespace, "wide")[
        "status"].get("readyReplicas") == 1, timeout=45)
    print(f"ready {time.monotonic() - raised:.1f} s after the LimitRange was raised")
    wait_for("ScalingLimited False", lambda: condition(get_md(custom, namespace, "wide"),
                                                       names.COND_SCALING_LIMITED)["status"] == "False", timeout=60)
    assert condition(ready_md(custom, namespace, "wide", timeout=30), names.COND_READY)["status"] == "True"


def test_a_rollout_on_a_full_gpu_type_replaces_pods_in_place_and_lands(cluster, dev_cluster, namespace, tmp_path):
    """Two pods fill the H100 node's two GPUs; a template change then needs a GPU beside them for its first new
    pod (maxUnavailable 0): there is none. The unit rolls one pod fewer at a time instead (rollout.whenFull
    ReplaceInPlace), says so in an Event, lands, and goes back to the spec's strategy."""
    core, apps, custom = cluster["core"], cluster["apps"], cluster["custom"]
    body = spec(2)
    body["engine"]["targets"] = ["9.0"]
    cluster["operator"].start()
    apply_md(dev_cluster, namespace, tmp_path, "full", body)
    ready_md(custom, namespace, "full")
    old = set(wait_for("serving at rest", lambda: at_rest(core, apps, namespace), timeout=60))
    assert len(old) == 2
    apply_md(dev_cluster, namespace, tmp_path, "full", {**body, "serving": {**body["serving"],
                                                                           "podAnnotations": {"team": "b"}}})

    def landed() -> bool:
        pods = [p for p in inference_pods(core, namespace) if not p.metadata.deletion_timestamp]
        return len(pods) == 2 and all((p.metadata.annotations or {}).get("team") == "b" and is_ready(p) for p in pods)
    wait_for("the new template's pods on the full node", landed, timeout=120)
    ready_md(custom, namespace, "full")
    assert not set(serving_pods(core, namespace)) & old
    events = events_for(core, namespace, "full")
    told = [e for e in events if e.reason == "RolloutInPlace"]
    assert told and "one pod fewer at a time" in told[0].message, [e.reason for e in events]

    def strategy_back() -> bool:
        (unit,) = apps.list_namespaced_deployment(namespace).items
        return unit.spec.strategy.rolling_update.max_unavailable == 0 and names.ANNOTATION_ROLLOUT_IN_PLACE not in (
            unit.metadata.annotations or {})
    wait_for("the spec's strategy back", strategy_back, timeout=60)
    wait_for("the status says the rollout is done", lambda: (m := get_md(custom, namespace, "full")) and all(
        u.get("rollout") != "InPlace" for u in m["status"]["units"]) and condition(m, names.COND_READY)["status"]
        == "True", timeout=60)
