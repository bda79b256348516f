"""Gather the planner's facts from the cluster and the engine store.

Nodes (labels, schedulable, GPUs allocatable and requested), this namespace's build
Jobs (state + the converter's termination message), serving Deployments, and the
store records of the keys the spec needs. Objects are read as the plain dicts the API
sends. Read errors of the store become ``ClusterFacts.store_error`` so the planner never
mistakes "could not look" for "gone".
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from trtop import names
from trtop.api.engine import EngineKey, EngineRecord
from trtop.k8s.client import get_clients, plain, timeout
from trtop.planning.facts import DeploymentFact, JobFact, NodeFact, ObjectFact, PodFact
from trtop.store import EngineStore
from trtop.store.bounded import StoreTimeoutError, bounded_call

log = logging.getLogger(__name__)
USER_ERROR_EXIT = 2  # the converter's "do not retry" exit code


def _qty(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def _true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_ and c.get("status") == "True"), None)


def observe_nodes(namespaces: Sequence[str] = ()) -> tuple[NodeFact, ...]:
    """Nodes and the GPUs pods request on them: the pods of ``namespaces`` only when given (a namespaced
    operator may not list other namespaces' pods, so it sees only its own GPU use)."""
    c = get_clients()
    requested: dict[str, int] = defaultdict(int)
    running = "status.phase!=Succeeded,status.phase!=Failed"
    if namespaces:
        items = [p for ns in namespaces for p in plain(c.core.list_namespaced_pod(
            ns, field_selector=running, _request_timeout=timeout()))["items"]]
    else:
        items = plain(c.core.list_pod_for_all_namespaces(field_selector=running, _request_timeout=timeout()))["items"]
    for pod in items:
        node = pod["spec"].get("nodeName")
        for ctr in pod["spec"].get("containers", []) if node else []:
            requested[node] += _qty(((ctr.get("resources") or {}).get("limits") or {}).get(names.GPU_RESOURCE, 0))
    out = []
    for node in plain(c.core.list_node(_request_timeout=timeout()))["items"]:
        name = node["metadata"]["name"]
        fact = node_fact(node, requested.get(name, 0), _DOWN_SEEN.get(name))
        if fact.schedulable:
            _DOWN_SEEN.pop(name, None)
        else:
            _DOWN_SEEN.setdefault(name, fact.down_since or time.time())
        out.append(fact)
    return tuple(out)


_DOWN_SEEN: dict[str, float] = {}  # node -> when this process first saw it not schedulable


def node_fact(node: Mapping[str, Any], gpu_requested: int, down_since: float | None = None) -> NodeFact:
    """A node as the planner sees it. ``down_since``: when this process saw it stop being
    schedulable; else its Ready condition's transition time (NotReady), else unknown."""
    meta, status = node["metadata"], node.get("status") or {}
    ready = _true(status.get("conditions"), "Ready") is not None
    schedulable = ready and not (node.get("spec") or {}).get("unschedulable", False)
    if not schedulable and down_since is None and not ready:
        cond: Mapping[str, Any] = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
        down_since = _epoch(cond.get("lastTransitionTime"))
    return NodeFact(
        name=meta["name"], labels=dict(meta.get("labels") or {}), schedulable=schedulable,
        gpu_allocatable=_qty((status.get("allocatable") or {}).get(names.GPU_RESOURCE, 0)),
        gpu_requested=gpu_requested, down_since=None if schedulable else down_since,
    )


def _epoch(timestamp: Any) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def observe_jobs(namespace: str) -> dict[EngineKey, JobFact]:
    c = get_clients()
    selector = f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}"
    out: dict[EngineKey, JobFact] = {}
    for job in plain(c.batch.list_namespaced_job(namespace, label_selector=selector, _request_timeout=timeout()))["items"]:
        meta, status = job["metadata"], job.get("status") or {}
        key = EngineKey((meta.get("labels") or {}).get(names.LABEL_ENGINE_KEY, ""))
        if not key or meta.get("deletionTimestamp"):
            continue
        name = meta["name"]
        failed = _true(status.get("conditions"), "Failed")
        if failed is not None:
            detail, user_error = _failure_details(namespace, name)
            text = f"{failed.get('reason') or 'Failed'}: {failed.get('message') or ''}".strip(": ")
            out[key] = JobFact(name, key, "failed", f"{text}. {detail}".strip(". ") or text, user_error)
        elif _true(status.get("conditions"), "Complete") or _true(status.get("conditions"), "SuccessCriteriaMet"):
            out[key] = JobFact(name, key, "succeeded")
        else:
            out[key] = JobFact(name, key, "active")
    return out


def _failure_details(namespace: str, job_name: str) -> tuple[str, bool]:
    """The last failed pod's termination message (the converter's JSON summary or log tail)."""
    pods = plain(get_clients().core.list_namespaced_pod(
        namespace, label_selector=f"job-name={job_name}", _request_timeout=timeout()))["items"]
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        summary = termination(pod)
        if summary is not None:
            return summary["detail"], summary["exit_code"] == USER_ERROR_EXIT
    return "", False


def termination(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """{detail, exit_code} of a pod's terminated container: the converter's JSON summary or its
    log tail (bounded), or None while nothing has terminated."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if not term:
            continue
        text = str(term.get("message") or "").strip()[-16384:]
        try:
            summary = json.loads(text)
            text = str(summary.get("error") or summary.get("message") or text)
        except (ValueError, AttributeError):
            pass
        tail = " | ".join(text.splitlines()[-5:])[-800:]
        code = term.get("exitCode")
        return {"detail": f"exit code {code}: {tail}" if tail else f"exit code {code}", "exit_code": code}
    return None


# Container waiting reasons that do not fix themselves: said in the engine's status while its Job waits.
_STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                  "CreateContainerError")


def waiting(pod: Mapping[str, Any]) -> str:
    """Why a pod that has not started is stuck ("" when it is not): unschedulable (a missing
    claim, no node with room or the right labels) or a container that cannot be created."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return ""
    name = meta.get("name", "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
            return f"pod {name} cannot be scheduled: {cond.get('message') or cond['reason']}"[:600]
    for cs in status.get("containerStatuses") or []:
        wait = (cs.get("state") or {}).get("waiting") or {}
        if wait.get("reason") in _STUCK_REASONS:
            return f"pod {name} {wait['reason']}: {wait.get('message') or ''}".strip(": ")[:600]
    return ""


def controller_uid(obj: Mapping[str, Any]) -> str:
    """The uid of the object's controller owner ("" when it has none)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid", "")) for r in refs if r.get("controller")), "")


def observe_deployment(namespace: str, name: str, owner_uid: str | None = None) -> DeploymentFact | None:
    try:
        d = plain(get_clients().apps.read_namespaced_deployment(name, namespace, _request_timeout=timeout()))
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return deployment_fact(d, owner_uid)


def deployment_fact(d: Mapping[str, Any], owner_uid: str | None = None) -> DeploymentFact:
    name = d["metadata"]["name"]
    ann = d["metadata"].get("annotations") or {}
    st = d.get("status") or {}
    keys = tuple(EngineKey(k) for k in ann.get(names.ANNOTATION_ENGINE_KEYS, "").split(",") if k)
    return DeploymentFact(
        name=name, engine_set_hash=ann.get(names.ANNOTATION_ENGINE_SET, ""),
        model_revision=ann.get(names.ANNOTATION_SPEC_HASH, ""), replicas=int(d["spec"].get("replicas") or 0),
        ready_replicas=int(st.get("readyReplicas") or 0), updated_replicas=int(st.get("updatedReplicas") or 0),
        available=_true(st.get("conditions"), "Available") is not None, engine_keys=keys,
        foreign=owner_uid is not None and controller_uid(d) != owner_uid,
        applied_hash=ann.get(names.ANNOTATION_APPLIED_HASH, ""),
        target=str((d["metadata"].get("labels") or {}).get(names.LABEL_TARGET, "")),
        template_hash=ann.get(names.ANNOTATION_TEMPLATE_HASH, ""), uid=str(d["metadata"].get("uid", "")),
        refused=_refusal((_true(st.get("conditions"), "ReplicaFailure") or {}).get("message")),
        in_place=ann.get(names.ANNOTATION_ROLLOUT_IN_PLACE) == "true",
        quota_retry=str(ann.get(names.ANNOTATION_QUOTA_RETRY, "")),
    )


_REFUSED_POD = re.compile(r'^pods? "[^"]*" is forbidden: ', re.IGNORECASE)


def _refusal(message: object) -> str:
    """The cause in a unit's ReplicaFailure message ("exceeded quota: gpus, requested: ..."), without the refused
    pod's name: each retry of the ReplicaSet names a new pod, and the status would be written again for it."""
    return _REFUSED_POD.sub("", str(message or ""))[:512]


def pod_fact(pod: Mapping[str, Any]) -> PodFact:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ready = (not meta.get("deletionTimestamp") and status.get("phase") == "Running"
             and _true(status.get("conditions"), "Ready") is not None)
    stuck = not meta.get("deletionTimestamp") and any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in status.get("conditions") or ())
    return PodFact(str(meta.get("name", "")), str((meta.get("labels") or {}).get(names.LABEL_TARGET, "")),
                   str((meta.get("annotations") or {}).get(names.ANNOTATION_TEMPLATE_HASH, "")), ready, stuck)


def observe_service(namespace: str, name: str, owner_uid: str) -> ObjectFact | None:
    try:
        svc = plain(get_clients().core.read_namespaced_service(name, namespace, _request_timeout=timeout()))
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return object_fact(svc, owner_uid)


def object_fact(obj: Mapping[str, Any], owner_uid: str) -> ObjectFact:
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    return ObjectFact(foreign=controller_uid(obj) != owner_uid, applied_hash=ann.get(names.ANNOTATION_APPLIED_HASH, ""))


# Each read on a thread of its own, abandoned after its timeout (``trtop.store.bounded``): a scope
# whose reads hang costs a reconcile its timeout, and once this many of them are stuck, nothing.
STUCK_READS_PER_STORE = 2


def read_records(store: EngineStore, keys: Iterable[EngineKey],
                 timeout_seconds: float = 10.0) -> tuple[dict[EngineKey, EngineRecord], str]:
    records: dict[EngineKey, EngineRecord] = {}
    for key in keys:
        try:
            record = bounded_call(store.uri, functools.partial(store.get_record, key), timeout_seconds,
                                  stuck_limit=STUCK_READS_PER_STORE, name=f"trtop-store-{key}")
        except StoreTimeoutError as e:
            why = str(e)
            log.warning("Reading engine %s from the store %s: %s", key, store.uri, why)
            return records, f"engine store {store.uri} unreadable: {why}"
        except Exception as e:  # noqa: BLE001 - any store failure means "could not look", never "gone"
            log.warning("Could not read engine %s from the store %s: %s", key, store.uri, e)
            return records, f"engine store {store.uri} unreadable: {str(e)[:300]}"
        if record is not None:
            records[key] = record
    return records, ""
