"""Reconcile one ModelDeployment: observe -> plan -> apply -> status + Events.

Level-based: called on create/update/resume and by a timer, it arrives at the same
place however often it runs. Errors are translated here only: a spec trtop cannot honour
becomes a Stalled status and a Warning Event; API errors become kopf.TemporaryError.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from trtop import names
from trtop.api.errors import SpecError
from trtop.api.spec import parse_spec
from trtop.config import Settings
from trtop.handlers import metrics
from trtop.handlers.scale_state import last_decision
from trtop.k8s import observe
from trtop.k8s.apply import apply, create_job
from trtop.k8s.events import post_event
from trtop.planning.engines import engine_statuses
from trtop.planning.facts import ClusterFacts, JobFact
from trtop.planning.admission import check_spec_trust
from trtop.planning.plan import Plan, plan_model_deployment
from trtop.planning.status import events_between
from trtop.planning.targets import discover_targets
from trtop.store import open_store, scoped_uri

log = logging.getLogger(__name__)
_seen_ready: set[str] = set()  # engine keys this process has counted (cache-hit metric)
_built_by_us: set[str] = set()
# One reconcile at a time per object: kopf's handlers and the resync loop may both call in.
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(body: Mapping[str, Any], patch: kopf.Patch, settings: Settings,
              autoscaled: int | None = None, scaling_limit: str = "") -> Plan | None:
    uid = str(body["metadata"].get("uid"))
    if autoscaled is None:  # every reconcile keeps the autoscaler's last decision
        autoscaled, scaling_limit = last_decision(uid)
    with _locks[uid]:
        return _reconcile(body, patch, settings, autoscaled, scaling_limit)


def _reconcile(body: Mapping[str, Any], patch: kopf.Patch, settings: Settings, autoscaled: int | None,
               scaling_limit: str) -> Plan | None:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    status = dict(body.get("status") or {})
    try:
        spec = parse_spec(body.get("spec") or {})
        check_spec_trust(spec, settings)
    except SpecError as e:
        _report_spec_error(body, patch, e)
        metrics.RECONCILES.labels("invalid-spec").inc()
        return None
    try:
        facts = _observe(ns, name, spec, settings)
        plan = plan_model_deployment(body, facts, settings, autoscaled_replicas=autoscaled,
                                     scaling_limit=scaling_limit, now=now())
        created = [job for job in plan.jobs_to_create if not facts.store_error and create_job(job)]
        for job in created:
            metrics.BUILDS.labels("created").inc()
            _built_by_us.add(job["metadata"]["labels"][names.LABEL_ENGINE_KEY])
            post_event(body, "Normal", "BuildStarted", f"Created build Job {job['metadata']['name']} for target "
                       f"{job['metadata']['labels'][names.LABEL_TARGET]}.")
        if plan.jobs_to_create:  # they exist now (ours or a concurrent one's): plan again with them
            jobs = dict(facts.jobs)
            for job in plan.jobs_to_create:
                key = job["metadata"]["labels"][names.LABEL_ENGINE_KEY]
                jobs.setdefault(key, JobFact(job["metadata"]["name"], key, "active"))
            plan = plan_model_deployment(body, replace(facts, jobs=jobs), settings,
                                         autoscaled_replicas=autoscaled, scaling_limit=scaling_limit, now=now())
        if plan.service is not None:
            apply(plan.service)
        if plan.deployment is not None:
            apply(plan.deployment)
    except ApiException as e:
        metrics.RECONCILES.labels("api-error").inc()
        raise kopf.TemporaryError(f"Kubernetes API error ({e.status} {e.reason}); retrying.", delay=5) from e
    _count_engines(plan)
    _write_status(status, plan.status, patch, body)
    metrics.RECONCILES.labels("ok").inc()
    return plan


def _observe(ns: str, name: str, spec: Any, settings: Settings) -> ClusterFacts:
    nodes = observe.observe_nodes(settings.namespaces)
    base = ClusterFacts(nodes=nodes)
    requests = engine_statuses(spec, discover_targets(spec, nodes), base, settings, ns)
    store = open_store(scoped_uri(settings.store_uri, settings.store_scope(ns)))
    records, store_error = observe.read_records(store, [e.key for e in requests])
    return ClusterFacts(nodes=nodes, jobs=observe.observe_jobs(ns), records=records,
                        deployment=observe.observe_deployment(ns, name), store_error=store_error)


def _count_engines(plan: Plan) -> None:
    for e in plan.engines:
        if e.state == "Ready" and e.key not in _seen_ready:
            _seen_ready.add(e.key)
            if e.key in _built_by_us:
                metrics.BUILDS.labels("succeeded").inc()
            else:
                metrics.ENGINE_CACHE_HITS.inc()
        elif e.state == "Failed" and e.key in _built_by_us:
            _built_by_us.discard(e.key)
            metrics.BUILDS.labels("failed").inc()


def _write_status(old: Mapping[str, Any], new: Mapping[str, Any], patch: kopf.Patch,
                  body: Mapping[str, Any]) -> None:
    for event in events_between(old, new):
        # The module logger (not kopf's, which would post a second Event) logs it once.
        post_event(body, event.type, event.reason, event.message)
        (log.warning if event.type == "Warning" else log.info)("%s/%s: %s", body["metadata"]["namespace"],
                                                                 body["metadata"]["name"], event.message)
    for field, value in new.items():
        if old.get(field) != value:
            patch.status[field] = value


def _report_spec_error(body: Mapping[str, Any], patch: kopf.Patch, error: SpecError) -> None:
    old = dict(body.get("status") or {})
    gen = int(body["metadata"].get("generation", 0))
    message = f"{error} (fix the spec; nothing was built or changed)"
    conds: list[dict[str, Any]] = [
        {"type": names.COND_READY, "status": "False", "reason": "InvalidSpec", "message": message},
        {"type": names.COND_STALLED, "status": "True", "reason": "InvalidSpec", "message": message},
        {"type": names.COND_RECONCILING, "status": "False", "reason": "InvalidSpec", "message": message},
    ]
    prev = {c.get("type"): c for c in old.get("conditions", [])}
    for c in conds:
        p = prev.get(c["type"], {})
        c["lastTransitionTime"] = p.get("lastTransitionTime", now()) if p.get("status") == c["status"] else now()
        c["observedGeneration"] = gen
    # Keep the other conditions (e.g. Available of a Deployment still serving the last good spec).
    kept = [c for t, c in prev.items() if t not in {c["type"] for c in conds}]
    new = {"observedGeneration": gen, "phase": "Stalled", "message": message, "conditions": conds + kept}
    if old.get("message") != message:
        post_event(body, "Warning", "InvalidSpec", message)
        log.warning("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], message)
    for field, value in new.items():
        if old.get(field) != value:
            patch.status[field] = value
