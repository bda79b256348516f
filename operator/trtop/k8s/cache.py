"""In-memory indices of the cluster, maintained from watch events (informer-style).

kopf streams the events (``trtop.handlers.main`` registers one ``on.event`` per kind);
each ``on_<kind>`` here updates the index and returns the ModelDeployments the change may
concern, which the caller puts on the work queue. A reconcile then reads memory: nodes
(GPU labels, allocatable, schedulable, GPUs requested by pods), build Jobs by engine key
(with their failed pods' termination messages), serving Deployments (by name and by owner:
the units of a ModelDeployment) and Services by name,
serving pods by ModelDeployment, and the ModelDeployments themselves.

Thread-safety: events arrive on the event loop, reconciles run in worker threads; every
read and write holds ``_lock`` and reads return copies.

Nothing is kept for an object that is gone (the operator runs for months over thousands of
objects, and names come back): a ModelDeployment's entries leave with its DELETED event (or
when an object of its name with another uid shows up, a delete the watch missed), and the
state other modules keep per object goes with them through ``when_forgotten``; a build
pod's termination summary is filed under its Job's uid, so a new Job of the same name
never shows the last one's failure, and leaves with the Job.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from trtop import names
from trtop.api.engine import EngineKey
from trtop.api.errors import SpecError
from trtop.api.spec import ModelDeploymentSpec, parse_spec
from trtop.api.targets import Target, gpu_target_of_node
from trtop.k8s.observe import (
    USER_ERROR_EXIT, controller_uid, deployment_fact, node_fact, object_fact, pod_fact, termination, waiting,
)
from trtop.planning.facts import DeploymentFact, JobFact, NodeFact, ObjectFact, PodFact
from trtop.planning.targets import node_matches_selector

Key = tuple[str, str]  # (namespace, name) of a ModelDeployment
# How long an architecture counts as full after a serving pod of it found no node (unless one finds a node first):
# its free GPUs, as counted, are not there. Then new capacity may try it again (one probe: a pod that waits moves).
FULL_SECONDS = 300.0
# Called with a gone ModelDeployment's uid and the engine keys no other object uses now.
Forget = Callable[[str, tuple[EngineKey, ...]], None]
# A namespace's store sharing group, itself first (Settings.store_peers).
Peers = Callable[[str], tuple[str, ...]]


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _slim(body: Mapping[str, Any], *fields: str) -> dict[str, Any]:
    """The fields trtop reads, without managedFields (most of an object's bytes)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {"metadata": meta, **{f: body.get(f) or {} for f in fields}}


def _replica_set_pod(meta: Mapping[str, Any]) -> bool:
    """Whether a pod is a ReplicaSet's (a unit's pods are). Labels alone are anyone's to copy: a bare pod
    made from a serving pod's manifest, or a debug copy, would count as ready capacity, be scraped for
    load and mark its architecture full; one orphaned by its ReplicaSet leaves the unit's count too."""
    return any(r.get("controller") and r.get("kind") == "ReplicaSet" and r.get("apiVersion") == "apps/v1"
               for r in meta.get("ownerReferences") or ())


def _gpus(pod: Mapping[str, Any]) -> int:
    total = 0
    for ctr in (pod.get("spec") or {}).get("containers") or []:
        value = ((ctr.get("resources") or {}).get("limits") or {}).get(names.GPU_RESOURCE, 0)
        try:
            total += int(str(value))
        except ValueError:
            continue
    return total


# What admission enforces, per kind the operator watches for refused units (``ClusterCache.on_admission_policy``).
_ENFORCED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "ResourceQuota": lambda body: (body.get("status") or {}).get("hard"),
    "LimitRange": lambda body: (body.get("spec") or {}).get("limits"),
}


@dataclass(frozen=True)
class Admission:
    """What one ResourceQuota or LimitRange of a namespace lets in: the limits it enforces, a quota's usage, and
    ``state``, which changes when the room grows (other limits, or less used): a unit it refused may fit now."""

    limits: str
    used: Mapping[str, str]
    state: str


def admission_of(kind: str, body: Mapping[str, Any], before: Admission | None) -> Admission:
    """``body``'s Admission after ``before`` (None: first seen). More used, or the same, leaves the state as it was:
    nothing refused fits better, so the units are not marked again for every pod the namespace starts."""
    limits = json.dumps(_ENFORCED[kind](body) or {}, sort_keys=True)
    used = {str(k): str(v) for k, v in ((body.get("status") or {}).get("used") or {}).items()} \
        if kind == "ResourceQuota" else {}
    if before is not None and before.limits == limits and not _fell(before.used, used):
        return Admission(limits, used, before.state)
    # The object's version at the change: unique per change, so usage that rose and fell back still reads as new.
    version = str((body.get("metadata") or {}).get("resourceVersion", ""))
    return Admission(limits, used, json.dumps([limits, version]))


def _fell(before: Mapping[str, str], now: Mapping[str, str]) -> bool:
    """Whether any resource's usage fell (or went, or cannot be read: counted as a change)."""
    for resource, quantity in before.items():
        if resource not in now:
            return True
        try:
            if _quantity(now[resource]) < _quantity(quantity):
                return True
        except ValueError:
            return True
    return False


def _quantity(text: str) -> Decimal:
    return parse_quantity(text)  # type: ignore[no-untyped-call, no-any-return]


class ClusterCache:
    """What the watches have told us; see the module docstring."""

    def __init__(self, clock: Any = time.time, peers: Peers = lambda namespace: (namespace,)) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._peers = peers  # Settings.store_peers: a sharing group's namespaces build each engine key once
        self.mds: dict[Key, dict[str, Any]] = {}
        self._uids: dict[str, Key] = {}
        self._specs: dict[Key, tuple[int, ModelDeploymentSpec | None]] = {}
        self._handled_generation: dict[Key, int] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._down_since: dict[str, float] = {}
        self._pod_gpus: dict[Key, tuple[str, int]] = {}  # pod -> (node, GPUs)
        self._requested: defaultdict[str, int] = defaultdict(int)
        self._job_pods: dict[str, dict[str, Any]] = {}  # Job uid -> last terminated (or stuck) pod summary
        self._serving_pods: defaultdict[Key, dict[str, dict[str, Any]]] = defaultdict(dict)
        self._full: dict[tuple[str, str], float] = {}  # (namespace, unit label) -> when a serving pod found no node
        self._jobs: defaultdict[str, dict[EngineKey, dict[str, Any]]] = defaultdict(dict)
        self._deployments: dict[Key, dict[str, Any]] = {}
        self._deployments_by_owner: defaultdict[str, set[Key]] = defaultdict(set)  # controller uid -> keys
        self._services: dict[Key, dict[str, Any]] = {}
        # namespace -> "ResourceQuota/name" or "LimitRange/name" -> what it lets in
        self._admission: defaultdict[str, dict[str, Admission]] = defaultdict(dict)
        self.users_of_key: defaultdict[EngineKey, set[Key]] = defaultdict(set)  # filled after each plan
        self._keys_of_user: dict[Key, tuple[EngineKey, ...]] = {}  # the reverse: O(1) to replace
        self._node_facts: dict[str, NodeFact] = {}  # derived from _nodes/_requested, dropped when they change
        self._absent: dict[tuple[Key, str], set[str]] = {}  # (object, kind) -> stages at which a GET found it missing
        self._forgetters: list[Forget] = []

    # ModelDeployments --------------------------------------------------------------------
    def on_model_deployment(self, event: str, body: Mapping[str, Any]) -> list[Key]:
        key = _key(body)
        uid = _uid(body)
        gone: list[tuple[str, tuple[EngineKey, ...]]] = []
        try:
            with self._lock:
                old = self.mds.get(key)
                old_uid = _uid(old) if old is not None else uid
                if event == "DELETED":
                    # (A late delete of an object already replaced by a new one of its name leaves the new one be.)
                    gone.append(self._forget_model_deployment(key, uid) if old_uid == uid else (uid, ()))
                    return []
                if old_uid != uid:  # the same name, a new object: the old one's delete was missed
                    gone.append(self._forget_model_deployment(key, old_uid))
                    old = None
                if old is not None and _rv(old) > _rv(body):
                    return []  # our own status write already gave us something newer
                self.mds[key] = {**dict(body), **_slim(body)}
                if uid:
                    self._uids[uid] = key
                generation = int((body.get("metadata") or {}).get("generation") or 0)
                # Our own status writes change nothing the plan reads: no reconcile for them.
                return [] if self._handled_generation.get(key) == generation else [key]
        finally:
            # Outside the lock: a forgetter may take locks of its own.
            for forgotten in gone:
                for forget in list(self._forgetters):
                    forget(*forgotten)

    def _forget_model_deployment(self, key: Key, uid: str) -> tuple[str, tuple[EngineKey, ...]]:
        """Drop what is kept for the object; (its uid, the engine keys nobody else uses). The caller holds the lock."""
        self.mds.pop(key, None)
        self._specs.pop(key, None)
        self._handled_generation.pop(key, None)
        if self._uids.get(uid) == key:
            del self._uids[uid]
        released = self._set_users(key, ())
        # Every name it may have had a GET answer 404 for (its Service, its units): a later
        # object of that name asks again, so someone else's Deployment made meanwhile is seen
        # (and left alone) rather than taken over by a forced apply.
        ns, name = key
        for absent in [a for a in self._absent if a[0][0] == ns and _may_be_named_for(name, a[0][1])]:
            del self._absent[absent]
        return uid, released

    def when_forgotten(self, forget: Forget) -> None:
        """Call ``forget(uid, engine_keys)`` once a ModelDeployment is gone, with the engine keys no
        other object uses any more: per-object state kept elsewhere (reconcile locks, autoscaler
        decisions, metric bookkeeping) leaves with it. Called from the watch's event, outside the lock."""
        with self._lock:
            self._forgetters.append(forget)

    def remember_status_write(self, body: Mapping[str, Any]) -> None:
        """The object the status patch returned: newer than what the watch has sent yet."""
        with self._lock:
            key = _key(body)
            old = self.mds.get(key)
            # Only over the object it was written to: one deleted meanwhile must not come back.
            if old is not None and _uid(old) == _uid(body) and _rv(body) >= _rv(old):
                self.mds[key] = {**dict(body), **_slim(body)}

    def handled(self, key: Key, generation: int, engine_keys: tuple[EngineKey, ...]) -> None:
        with self._lock:
            self._handled_generation[key] = generation
            self._set_users(key, engine_keys)

    def _set_users(self, key: Key, engine_keys: tuple[EngineKey, ...]) -> tuple[EngineKey, ...]:
        """Record ``key``'s engine keys; returns those it had that nobody uses now."""
        released = []
        for k in self._keys_of_user.pop(key, ()):
            users = self.users_of_key.get(k)
            if users is not None:
                users.discard(key)
                if not users:
                    del self.users_of_key[k]
                    released.append(k)
        for k in engine_keys:
            self.users_of_key[k].add(key)
        if engine_keys:
            self._keys_of_user[key] = engine_keys
        return tuple(k for k in released if k not in self.users_of_key)

    def knows_uid(self, uid: str) -> bool:
        """Whether a ModelDeployment of this uid is here (not deleted, nor replaced by a new one of its name)."""
        with self._lock:
            return uid in self._uids

    def model_deployment(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            body = self.mds.get(key)
            return dict(body) if body is not None else None

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self.mds)

    def spec_of(self, key: Key) -> ModelDeploymentSpec | None:
        with self._lock:
            body = self.mds.get(key)
            if body is None:
                return None
            generation = int(body["metadata"].get("generation") or 0)
            cached = self._specs.get(key)
            if cached is not None and cached[0] == generation:
                return cached[1]
            try:
                spec: ModelDeploymentSpec | None = parse_spec(body.get("spec") or {})
            except SpecError:
                spec = None
            self._specs[key] = (generation, spec)
            return spec

    # Nodes and pods ----------------------------------------------------------------------
    def on_node(self, event: str, body: Mapping[str, Any]) -> list[Key]:
        name = str(body["metadata"]["name"])
        with self._lock:
            before = self._node_fact(name)
            self._node_facts.pop(name, None)
            if event == "DELETED":
                self._nodes.pop(name, None)
                self._down_since.pop(name, None)
            else:
                meta = body["metadata"]
                self._nodes[name] = {"metadata": {"name": name, "labels": dict(meta.get("labels") or {})},
                                     "spec": {"unschedulable": (body.get("spec") or {}).get("unschedulable", False)},
                                     "status": {k: v for k, v in (body.get("status") or {}).items()
                                                if k in ("allocatable", "conditions")}}
            after = self._node_fact(name)
            if after is not None and not after.schedulable:
                self._down_since.setdefault(name, after.down_since or self._clock())
            elif after is not None:
                self._down_since.pop(name, None)
            self._node_facts.pop(name, None)
            return self._concerned_by_node(before, after)

    def _node_fact(self, name: str) -> NodeFact | None:
        """The node's fact, kept until the node or the GPUs requested on it change (a
        reconcile reads every node: rebuilding 1000s of facts a second would dominate)."""
        fact = self._node_facts.get(name)
        if fact is not None:
            return fact
        node = self._nodes.get(name)
        if node is None:
            return None
        fact = node_fact(node, self._requested.get(name, 0), self._down_since.get(name))
        self._node_facts[name] = fact
        return fact

    def nodes(self) -> tuple[NodeFact, ...]:
        with self._lock:
            return tuple(f for f in (self._node_fact(n) for n in self._nodes) if f is not None)

    def _concerned_by_node(self, before: NodeFact | None, after: NodeFact | None) -> list[Key]:
        """ModelDeployments whose targets or engine states this node change can alter.

        Only a change in what the node offers (its GPU type, whether it counts: schedulable
        with GPUs) matters; heartbeats and pod churn never reach the planner.
        """
        def offer(n: NodeFact | None) -> tuple[Any, ...] | None:
            if n is None:
                return None
            return (gpu_target_of_node(n.labels, with_product=True), n.schedulable, n.gpu_allocatable > 0,
                    tuple(sorted(n.labels.items())))
        if offer(before) == offer(after):
            return []
        concerned = []
        for key in list(self.mds):
            spec = self.spec_of(key)
            if spec is None:
                continue
            if any(n is not None and self._node_may_serve(spec, n) for n in (before, after)):
                concerned.append(key)
        return concerned

    @staticmethod
    def _node_may_serve(spec: ModelDeploymentSpec, node: NodeFact) -> bool:
        if not node_matches_selector(node.labels, spec.serving.node_selector):
            return False
        gpu = gpu_target_of_node(node.labels, with_product=spec.engine.hardware_compatibility == "none")
        if gpu is None:
            return any(t.is_cpu for t in spec.engine.targets)
        plain = gpu_target_of_node(node.labels, with_product=False)
        return spec.engine.auto_targets or any(t in (gpu, plain, Target(gpu.cc)) for t in spec.engine.targets)

    def on_pod(self, event: str, body: Mapping[str, Any]) -> list[Key]:
        key = _key(body)
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        labels = meta.get("labels") or {}
        gone = event == "DELETED" or status.get("phase") in ("Succeeded", "Failed")
        node = (body.get("spec") or {}).get("nodeName")
        with self._lock:
            old = self._pod_gpus.pop(key, None)
            if old is not None:
                self._requested[old[0]] -= old[1]
                if not self._requested[old[0]]:
                    del self._requested[old[0]]  # nodes come and go (autoscaled pools)
                self._node_facts.pop(old[0], None)
            gpus = _gpus(body)
            if node and gpus and not gone:
                self._pod_gpus[key] = (str(node), gpus)
                self._requested[str(node)] += gpus
                self._node_facts.pop(str(node), None)
            job = labels.get("job-name")
            concerned: list[Key] = []
            if job and labels.get(names.LABEL_COMPONENT) == names.COMPONENT_ENGINE_BUILD:
                # Filed under the Job's uid, not its name: names repeat per engine key, and a new
                # Job must not show the last one's failure (nor its user-error verdict).
                job_uid = controller_uid(body)
                engine_key = EngineKey(labels.get(names.LABEL_ENGINE_KEY, ""))
                job_known = (self._jobs.get(key[0], {}).get(engine_key) or {}).get("uid") == job_uid
                before = self._job_pods.get(job_uid)
                summary = termination(body)
                stuck = "" if event == "DELETED" else waiting(body)
                if not job_uid:
                    pass  # not a Job's pod after all: nothing to file it under
                elif event == "DELETED" and not job_known:
                    self._job_pods.pop(job_uid, None)  # its Job went first: nobody reads this again
                elif summary is not None:
                    self._job_pods[job_uid] = summary
                elif stuck or (before or {}).get("waiting"):
                    self._job_pods[job_uid] = {"waiting": stuck}
                if stuck != (before or {}).get("waiting", "") and summary is None:
                    # A build that cannot start says why in its engine's status (a missing claim, a bad image).
                    # Its users, and the object that made the Job (it may not have finished the
                    # reconcile that records it as a user yet).
                    maker = (key[0], str(labels.get(names.LABEL_MODEL_DEPLOYMENT, "")))
                    peers = self._peers(key[0])
                    concerned = sorted({k for k in self.users_of_key.get(engine_key, set()) if k[0] in peers}
                                       | ({maker} if maker in self.mds else set()))
            md = labels.get(names.LABEL_MODEL_DEPLOYMENT)
            if md and labels.get(names.LABEL_COMPONENT) == names.COMPONENT_INFERENCE:
                owner = (key[0], str(md))
                pods = self._serving_pods.setdefault(owner, {})
                was = pods.get(key[1])
                if event == "DELETED" or not _replica_set_pod(meta):
                    pods.pop(key[1], None)
                    if not pods:
                        del self._serving_pods[owner]
                else:
                    ann = meta.get("annotations") or {}
                    pods[key[1]] = {"metadata": {**{k: meta.get(k) for k in ("name", "namespace", "deletionTimestamp")},
                                                 "labels": {k: v for k, v in labels.items() if k == names.LABEL_TARGET},
                                                 "annotations": {k: v for k, v in ann.items()
                                                                 if k == names.ANNOTATION_TEMPLATE_HASH}},
                                    "spec": {"nodeName": node},
                                    "status": {k: status.get(k) for k in ("phase", "conditions", "podIP")}}
                after = pods.get(key[1])
                was_unbound = was is not None and not (was.get("spec") or {}).get("nodeName")
                # Ready capacity counts ready pods, and a pod no node can take moves elsewhere: a
                # serving pod turning ready or unschedulable (or going) is news to its ModelDeployment.
                def state(pod: dict[str, Any] | None) -> tuple[bool, bool] | None:
                    fact = pod_fact(pod) if pod is not None else None
                    return None if fact is None else (fact.ready, fact.unschedulable)
                slug = str(labels.get(names.LABEL_TARGET, ""))
                if after is not None and pod_fact(after).unschedulable:
                    self._full[(key[0], slug)] = self._clock()  # its architecture is full, whatever the count says
                elif node and not gone and (was is None or was_unbound):
                    self._full.pop((key[0], slug), None)  # a pod of it found a node: there was room after all
                if state(was) != state(after):
                    return [owner] if owner in self.mds else []
        return concerned

    def full_targets(self, namespace: str) -> frozenset[str]:
        """Unit labels of architectures where a serving pod of ``namespace`` found no node within FULL_SECONDS.
        Per namespace: a tenant's own pods (which it can write) steer only its own placement."""
        now = self._clock()
        with self._lock:
            for k in [k for k, at in self._full.items() if now - at >= FULL_SECONDS]:
                del self._full[k]
            return frozenset(slug for (ns, slug) in self._full if ns == namespace)

    def serving_pods(self, key: Key) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._serving_pods.get(key, {}).values())

    def pod_facts(self, key: Key) -> tuple[PodFact, ...]:
        """The serving pods of a ModelDeployment: unit, template, ready."""
        with self._lock:
            return tuple(pod_fact(p) for _, p in sorted(self._serving_pods.get(key, {}).items()))

    # Jobs, Deployments, Services -----------------------------------------------------------
    def on_job(self, event: str, body: Mapping[str, Any]) -> list[Key]:
        meta = body["metadata"]
        ns = str(meta["namespace"])
        engine_key = EngineKey((meta.get("labels") or {}).get(names.LABEL_ENGINE_KEY, ""))
        if not engine_key:
            return []
        with self._lock:
            jobs = self._jobs[ns]
            before = jobs.get(engine_key)
            uid = str(meta.get("uid") or "")
            if event == "DELETED" or meta.get("deletionTimestamp"):
                if (before or {}).get("uid") in ("", None, uid):
                    jobs.pop(engine_key, None)  # (not a newer Job of the key that the event lagged behind)
                self._job_pods.pop(uid, None)
            else:
                jobs[engine_key] = {"name": meta["name"], "uid": uid,
                                    "conditions": (body.get("status") or {}).get("conditions")}
                if before is not None and before.get("uid") and before["uid"] != uid:
                    self._job_pods.pop(before["uid"], None)  # replaced while the watch missed its delete
            if not jobs:
                del self._jobs[ns]  # namespaces come and go too
            after = self._jobs.get(ns, {}).get(engine_key)
            if _planned(before) == _planned(after):
                return []  # (its uid, first known here for a Job this process claimed, is not news to the planner)
            owner = self._uids.get(controller_uid(body))
            peers = self._peers(ns)
            return sorted({k for k in self.users_of_key.get(engine_key, set()) if k[0] in peers}
                          | ({owner} if owner else set()))

    def share_builds(self, peers: Peers) -> None:
        """Whose build Jobs count for a namespace's engines (``Settings.store_peers``; by default its own)."""
        self._peers = peers

    def claim_job(self, job: Mapping[str, Any]) -> bool:
        """Mark a build Job as being created by this process; False when it is known already
        (another object sharing the engine key made it, or is making it, in this namespace or
        another of its store sharing group: no second create)."""
        meta = job["metadata"]
        engine_key = EngineKey((meta.get("labels") or {}).get(names.LABEL_ENGINE_KEY, ""))
        ns = str(meta["namespace"])
        with self._lock:
            if any(engine_key in self._jobs.get(peer, {}) for peer in self._peers(ns)):
                return False
            self._jobs[ns][engine_key] = {"name": meta["name"], "conditions": None}
            return True

    def release_job(self, job: Mapping[str, Any]) -> None:
        """The create of a claimed Job failed: forget the claim (the next plan tries again)."""
        meta = job["metadata"]
        engine_key = EngineKey((meta.get("labels") or {}).get(names.LABEL_ENGINE_KEY, ""))
        with self._lock:
            ns = str(meta["namespace"])
            jobs = self._jobs.get(ns, {})
            if (jobs.get(engine_key) or {}).get("conditions", 0) is None:
                jobs.pop(engine_key, None)
                if not jobs:
                    del self._jobs[ns]

    def jobs(self, namespace: str, keys: tuple[EngineKey, ...] | None = None) -> dict[EngineKey, JobFact]:
        """Build Jobs by engine key that serve ``namespace`` (only ``keys`` when given: a reconcile
        asks about its own engines, not the namespace's thousands): its own, and for a key it has
        none of, a Job of another namespace of its store sharing group, named ``namespace/name``
        (one build serves the group: the key is the scope's, the engine lands in the shared store)."""
        with self._lock:
            found: dict[EngineKey, dict[str, Any]] = {}
            for peer in reversed(self._peers(namespace)):  # its own namespace last: its Jobs win
                index = self._jobs.get(peer, {})
                shown = {k: ({**job, "name": f"{peer}/{job['name']}"} if peer != namespace else job)
                         for k, job in (index.items() if keys is None else ((k, index[k]) for k in keys if k in index))}
                found.update(shown)
            out = {}
            for key, job in found.items():
                conds = job.get("conditions") or []
                failed = next((c for c in conds if c.get("type") == "Failed" and c.get("status") == "True"), None)
                done = any(c.get("type") in ("Complete", "SuccessCriteriaMet") and c.get("status") == "True"
                           for c in conds)
                if failed is not None:
                    text = f"{failed.get('reason') or 'Failed'}: {failed.get('message') or ''}".strip(": ")
                    pod = self._job_pods.get(job.get("uid") or "") or {}
                    detail = pod.get("detail") or pod.get("waiting", "")
                    out[key] = JobFact(job["name"], key, "failed", f"{text}. {detail}".strip(". ") or text,
                                       pod.get("exit_code") == USER_ERROR_EXIT)
                else:
                    stuck = "" if done else str((self._job_pods.get(job.get("uid") or "") or {}).get("waiting", ""))
                    out[key] = JobFact(job["name"], key, "succeeded" if done else "active", stuck)
            return out

    def on_deployment(self, event: str, body: Mapping[str, Any]) -> list[Key]:
        with self._lock:
            self._index_owner(body, deleted=event == "DELETED")
            return self._owned(self._deployments, event, body)

    def _index_owner(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """The Deployment under its controller's uid (``units``); the caller holds the lock."""
        key = _key(body)
        before = self._deployments.get(key)
        if before is not None:
            owner = controller_uid(before)
            keys = self._deployments_by_owner.get(owner)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._deployments_by_owner[owner]
        if not deleted:
            self._deployments_by_owner[controller_uid(body)].add(key)

    def on_admission_policy(self, kind: str, event: str, body: Mapping[str, Any]) -> list[Key]:
        """A ResourceQuota (admission refuses by its ``status.hard``, which the quota controller copies from
        ``spec.hard``, against its ``status.used``) or a LimitRange (the LimitRanger plugin reads its ``spec.limits``
        as they are). When its room grows (``admission_of``), the ModelDeployments of its namespace with a unit whose
        pods the API server refused, to try them again now (``admission_state``)."""
        ns, name = _key(body)
        entry = f"{kind}/{name}"
        with self._lock:
            policies = self._admission.get(ns, {})
            before = policies.get(entry)
            after = None if event == "DELETED" else admission_of(kind, body, before)
            if after is not None:
                self._admission[ns][entry] = after
            elif before is not None:
                del policies[entry]
                if not policies:
                    del self._admission[ns]
            if (before and before.state) == (after and after.state):
                return []
            refused = {self._uids.get(controller_uid(d)) for k, d in self._deployments.items()
                       if k[0] == ns and deployment_fact(d).refused}
            return sorted(k for k in refused if k)

    def admission_state(self, namespace: str) -> str:
        """A digest of the states (``Admission``) of every ResourceQuota and LimitRange of ``namespace`` ("" where it
        has none): it changes when the room of any of them grows."""
        with self._lock:
            found = sorted((entry, a.state) for entry, a in self._admission.get(namespace, {}).items())
        return hashlib.sha256(json.dumps(found).encode()).hexdigest()[:16] if found else ""

    def on_service(self, event: str, body: Mapping[str, Any]) -> list[Key]:
        return self._owned(self._services, event, body)

    def remember_applied(self, body: Mapping[str, Any]) -> None:
        """The Deployment or Service an apply returned: newer than what the watch has sent yet,
        so a reconcile before its event compares with it (and applies nothing twice)."""
        index = {"Deployment": self._deployments, "Service": self._services}.get(str(body.get("kind")))
        if index is not None:
            with self._lock:
                if index is self._deployments:
                    # one of its owner's units from now on: a unit missing from ``units()`` until its
                    # watch event came was planned again from nothing, its replicas placed elsewhere
                    # while its pods were ready (Ready dropped in tests/e2e/test_units.py under load)
                    self._index_owner(body)
                self._absent.pop((_key(body), str(body.get("kind"))), None)
                self._keep(index, body)

    def _owned(self, index: dict[Key, dict[str, Any]], event: str, body: Mapping[str, Any]) -> list[Key]:
        with self._lock:
            # Whatever the event, an earlier "not there" no longer holds (and, once gone, is asked again).
            self._absent.pop((_key(body), "Deployment" if index is self._deployments else "Service"), None)
            if event == "DELETED":
                index.pop(_key(body), None)
            else:
                self._keep(index, body)
            owner = self._uids.get(controller_uid(body))
            return [owner] if owner else []

    @staticmethod
    def _keep(index: dict[Key, dict[str, Any]], body: Mapping[str, Any]) -> None:
        key = _key(body)
        old = index.get(key)
        if old is not None and _rv(old) > _rv(body):
            return
        slim = _slim(body, "status")
        slim["spec"] = {"replicas": (body.get("spec") or {}).get("replicas")}
        index[key] = slim

    def deployment(self, key: Key, owner_uid: str) -> DeploymentFact | None:
        with self._lock:
            d = self._deployments.get(key)
            return None if d is None else deployment_fact(d, owner_uid)

    def units(self, owner_uid: str) -> tuple[DeploymentFact, ...]:
        """The serving units a ModelDeployment controls (Deployments with an architecture label)."""
        with self._lock:
            found = (self._deployments.get(k) for k in sorted(self._deployments_by_owner.get(owner_uid, ())))
            return tuple(deployment_fact(d, owner_uid) for d in found
                         if d is not None and ((d["metadata"].get("labels") or {}).get(names.LABEL_TARGET)))

    def service(self, key: Key, owner_uid: str) -> ObjectFact | None:
        with self._lock:
            s = self._services.get(key)
            return None if s is None else object_fact(s, owner_uid)

    def knows_deployment(self, key: Key) -> bool:
        with self._lock:
            return key in self._deployments

    def note_absent(self, key: Key, kind: str, stage: str) -> None:
        """A GET found no ``kind`` named like ``key`` (not even someone else's) at this stage."""
        with self._lock:
            self._absent.setdefault((key, kind), set()).add(stage)

    def known_absent(self, key: Key, kind: str, stage: str) -> bool:
        with self._lock:
            return stage in self._absent.get((key, kind), ())

    def knows_service(self, key: Key) -> bool:
        with self._lock:
            return key in self._services


# Where ``planning.serving.unit_name`` cuts a long name: ``<md prefix>-<8 hex>-<slug>``.
_HASHED = re.compile(r"(?=-[0-9a-f]{8}-)")


def _may_be_named_for(md_name: str, name: str) -> bool:
    """Whether ``name`` may be ``md_name`` or one of its units' (``<md>-<slug>``, or the cut
    ``<md prefix>-<hash>-<slug>``). Errs towards yes: a wrong yes costs one more GET."""
    if name == md_name or name.startswith(md_name + "-"):
        return True
    return any(m.start() > 0 and md_name.startswith(name[:m.start()]) for m in _HASHED.finditer(name))


def _planned(job: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What the planner reads of a ``_jobs`` entry."""
    return None if job is None else (job["name"], job.get("conditions"))


def _uid(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid") or "")


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


CACHE = ClusterCache()
