"""Gather the planner's facts from the cluster and the engine store.

Nodes (labels, schedulable, GPUs allocatable and requested), this namespace's build
Jobs (state + the converter's termination message), the serving Deployment, and the
store records of the keys the spec needs. Objects are read as the plain dicts the API
sends. Read errors of the store become ``ClusterFacts.store_error`` so the planner never
mistakes "could not look" for "gone".
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from trtop import names
from trtop.api.engine import EngineKey, EngineRecord
from trtop.k8s.client import get_clients, plain
from trtop.planning.facts import DeploymentFact, JobFact, NodeFact
from trtop.store import EngineStore

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
        items = [p for ns in namespaces for p in plain(c.core.list_namespaced_pod(ns, field_selector=running))["items"]]
    else:
        items = plain(c.core.list_pod_for_all_namespaces(field_selector=running))["items"]
    for pod in items:
        node = pod["spec"].get("nodeName")
        for ctr in pod["spec"].get("containers", []) if node else []:
            requested[node] += _qty(((ctr.get("resources") or {}).get("limits") or {}).get(names.GPU_RESOURCE, 0))
    out = []
    for node in plain(c.core.list_node())["items"]:
        meta, status = node["metadata"], node.get("status") or {}
        out.append(NodeFact(
            name=meta["name"], labels=dict(meta.get("labels") or {}),
            schedulable=_true(status.get("conditions"), "Ready") is not None
            and not (node.get("spec") or {}).get("unschedulable", False),
            gpu_allocatable=_qty((status.get("allocatable") or {}).get(names.GPU_RESOURCE, 0)),
            gpu_requested=requested.get(meta["name"], 0),
        ))
    return tuple(out)


def observe_jobs(namespace: str) -> dict[EngineKey, JobFact]:
    c = get_clients()
    selector = f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}"
    out: dict[EngineKey, JobFact] = {}
    for job in plain(c.batch.list_namespaced_job(namespace, label_selector=selector))["items"]:
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
    pods = plain(get_clients().core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}"))["items"]
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if not term:
                continue
            text = (term.get("message") or "").strip()
            try:
                summary = json.loads(text)
                text = summary.get("error") or summary.get("message") or text
            except (ValueError, AttributeError):
                pass
            tail = " | ".join(text.splitlines()[-5:])[-800:]
            code = term.get("exitCode")
            return (f"exit code {code}: {tail}" if tail else f"exit code {code}", code == USER_ERROR_EXIT)
    return "", False


def observe_deployment(namespace: str, name: str) -> DeploymentFact | None:
    try:
        d = plain(get_clients().apps.read_namespaced_deployment(name, namespace))
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    ann = d["metadata"].get("annotations") or {}
    st = d.get("status") or {}
    keys = tuple(EngineKey(k) for k in ann.get(names.ANNOTATION_ENGINE_KEYS, "").split(",") if k)
    return DeploymentFact(
        name=name, engine_set_hash=ann.get(names.ANNOTATION_ENGINE_SET, ""),
        model_revision=ann.get(names.ANNOTATION_SPEC_HASH, ""), replicas=int(d["spec"].get("replicas") or 0),
        ready_replicas=int(st.get("readyReplicas") or 0), updated_replicas=int(st.get("updatedReplicas") or 0),
        available=_true(st.get("conditions"), "Available") is not None, engine_keys=keys,
    )


def read_records(store: EngineStore, keys: Iterable[EngineKey]) -> tuple[dict[EngineKey, EngineRecord], str]:
    records: dict[EngineKey, EngineRecord] = {}
    for key in keys:
        try:
            record = store.get_record(key)
        except Exception as e:  # noqa: BLE001 - any store failure means "could not look", never "gone"
            log.warning("Could not read engine %s from the store %s: %s", key, store.uri, e)
            return records, f"engine store {store.uri} unreadable: {e}"
        if record is not None:
            records[key] = record
    return records, ""
