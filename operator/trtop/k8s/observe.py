"""Gather the planner's facts from the cluster and the engine store.

Nodes (labels, schedulable, GPUs allocatable and requested), this namespace's build
Jobs (state + the converter's termination message), the serving Deployment, and the
store records of the keys the spec needs. Read errors of the store become
``ClusterFacts.store_error`` so the planner never mistakes "could not look" for "gone".
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from trtop import names
from trtop.api.engine import EngineKey, EngineRecord
from trtop.k8s.client import get_clients
from trtop.planning.facts import DeploymentFact, JobFact, NodeFact
from trtop.store import EngineStore

log = logging.getLogger(__name__)
USER_ERROR_EXIT = 2


def _qty(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def observe_nodes() -> tuple[NodeFact, ...]:
    c = get_clients()
    requested: dict[str, int] = defaultdict(int)
    for pod in c.core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed").items:
        if not pod.spec.node_name:
            continue
        for ctr in pod.spec.containers or []:
            limits = (ctr.resources.limits or {}) if ctr.resources else {}
            requested[pod.spec.node_name] += _qty(limits.get(names.GPU_RESOURCE, 0))
    out = []
    for node in c.core.list_node().items:
        ready = any(cond.type == "Ready" and cond.status == "True" for cond in (node.status.conditions or []))
        out.append(NodeFact(
            name=node.metadata.name, labels=dict(node.metadata.labels or {}),
            schedulable=ready and not node.spec.unschedulable,
            gpu_allocatable=_qty((node.status.allocatable or {}).get(names.GPU_RESOURCE, 0)),
            gpu_requested=requested.get(node.metadata.name, 0),
        ))
    return tuple(out)


def observe_jobs(namespace: str) -> dict[EngineKey, JobFact]:
    c = get_clients()
    selector = f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}"
    jobs = c.batch.list_namespaced_job(namespace, label_selector=selector).items
    out: dict[EngineKey, JobFact] = {}
    for job in jobs:
        key = EngineKey((job.metadata.labels or {}).get(names.LABEL_ENGINE_KEY, ""))
        if not key or job.metadata.deletion_timestamp:
            continue
        conds = {cond.type: cond for cond in (job.status.conditions or []) if cond.status == "True"}
        if "Failed" in conds:
            message, user_error = _failure_details(namespace, job.metadata.name)
            reason = conds["Failed"].reason or "Failed"
            text = f"{reason}: {conds['Failed'].message or ''}".strip(": ")
            out[key] = JobFact(job.metadata.name, key, "failed", f"{text}. {message}".strip(". ") or text,
                               user_error)
        elif "Complete" in conds or "SuccessCriteriaMet" in conds:
            out[key] = JobFact(job.metadata.name, key, "succeeded")
        else:
            out[key] = JobFact(job.metadata.name, key, "active")
    return out


def _failure_details(namespace: str, job_name: str) -> tuple[str, bool]:
    """The last failed pod's termination message (the converter's JSON summary or log tail)."""
    c = get_clients()
    pods = c.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp or 0, reverse=True):
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            term = cs.state.terminated if cs.state else None
            if term is None:
                continue
            text = (term.message or "").strip()
            try:
                summary = json.loads(text)
                text = summary.get("error") or summary.get("message") or text
            except (ValueError, AttributeError):
                pass
            tail = " | ".join(text.splitlines()[-5:])[-800:]
            return (f"exit code {term.exit_code}: {tail}" if tail else f"exit code {term.exit_code}",
                    term.exit_code == USER_ERROR_EXIT)
    return "", False


def observe_deployment(namespace: str, name: str) -> DeploymentFact | None:
    from kubernetes.client.exceptions import ApiException

    c = get_clients()
    try:
        d = c.apps.read_namespaced_deployment(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    ann = d.metadata.annotations or {}
    st = d.status
    available = any(cond.type == "Available" and cond.status == "True" for cond in (st.conditions or []))
    keys = tuple(EngineKey(k) for k in ann.get(f"{names.GROUP}/engine-keys", "").split(",") if k)
    return DeploymentFact(
        name=name, engine_set_hash=ann.get(names.ANNOTATION_ENGINE_SET, ""),
        model_revision=ann.get(names.ANNOTATION_SPEC_HASH, ""), replicas=d.spec.replicas or 0,
        ready_replicas=st.ready_replicas or 0, updated_replicas=st.updated_replicas or 0,
        available=available, engine_keys=keys,
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
