"""The reconcile shell: the one path from a ModelDeployment to its objects and its status.

kopf's handlers, the safety-net resync and the autoscaler all call ``reconcile``. One way
through: gather facts -> plan once (pure; the invalid-spec status included) -> create the
missing build Jobs -> apply only the objects whose content differs from the live ones
(applied-hash), delete serving units whose architecture left once the others carry their
load -> write the status only when it changed, guarded by the object's
resourceVersion -> post one Event saying what changed (engines, phase, failures).

Every failure ends as a condition, never as a traceback: a 4xx of the API server is
Stalled with the server's own message; a transient error (timeout, 5xx, conflict, the
store) is retried with backoff (``Outcome.retry_after``) and said in Reconciling.

A status that only says "on the way" right after this pass applied the Service or the
Deployment is not written: their watch events bring the next reconcile within the
coalescing window (``Outcome.status_deferred``: the worker queues one anyway), and that one
writes what they show. Failures and Warnings are never deferred.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from trtop import names
from trtop.api.engine import EngineKey
from trtop.config import Settings
from trtop.handlers import metrics
from trtop.handlers.facts import gather
from trtop.handlers.scale_state import last_decision
from trtop.k8s.apply import apply, create_job, delete_deployment
from trtop.k8s.cache import CACHE
from trtop.k8s.errors import Failure, from_api_exception, from_transport_error
from trtop.k8s.events import patch_status, post_event
from trtop.planning.common import store_folders
from trtop.planning.plan import Plan, plan_model_deployment
from trtop.planning.status import events_between, one_event, status_patch, with_failure
from trtop.store.filesystem import make_folders, root_of

log = logging.getLogger(__name__)
_seen_ready: set[str] = set()  # engine keys this process has counted (cache-hit metric)
_built_by_us: set[str] = set()
# One reconcile at a time per object: the kopf handlers, the resync and the autoscaler may all call in.
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
# The writes of one plan run side by side (Jobs, Service, Deployment): each mostly waits on the API.
_WRITES = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="trtop-write")


@dataclass(frozen=True)
class Outcome:
    plan: Plan | None
    failure: Failure | None = None
    status_written: bool = False
    writes: int = 0  # API writes this reconcile made (Jobs, applies, status, Events)
    status_deferred: bool = False  # left to the reconcile the applied objects' events bring

    @property
    def should_retry(self) -> bool:
        return self.failure is not None and not self.failure.stalled


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(body: Mapping[str, Any], settings: Settings, *, autoscaled: int | None = None,
              scaling_limit: str = "", extra_status: Mapping[str, Any] | None = None) -> Outcome:
    """Bring one ModelDeployment's objects and status in line with its spec (level-based)."""
    uid = str(body["metadata"].get("uid"))
    if autoscaled is None:  # every reconcile keeps the autoscaler's last decision
        autoscaled, scaling_limit = last_decision(uid)
    try:
        with _locks[uid]:
            return _reconcile(body, settings, autoscaled, scaling_limit, extra_status or {})
    finally:
        if not CACHE.knows_uid(uid):
            # Deleted while this reconcile ran (or before it took the lock): ``_forget`` may have
            # dropped the lock already, and ``_locks[uid]`` above made it again; nothing else would.
            _locks.pop(uid, None)


def _reconcile(body: Mapping[str, Any], settings: Settings, autoscaled: int | None, scaling_limit: str,
               extra_status: Mapping[str, Any]) -> Outcome:
    old = dict(body.get("status") or {})
    plan: Plan | None = None
    failure: Failure | None = None
    writes = 0
    doing = "reading the cluster"
    try:
        facts = gather(body, settings)
        plan = plan_model_deployment(body, facts, settings, autoscaled_replicas=autoscaled,
                                     scaling_limit=scaling_limit, now=now())
        claimed = [job for job in plan.jobs_to_create if CACHE.claim_job(job)]
        create = functools.partial(_create_claimed, settings=settings)
        calls: list[tuple[str, Any, Mapping[str, Any]]] = [
            (f"creating build Job {j['metadata']['name']}", create, j) for j in claimed]
        calls += [(f"applying {m['kind']} {m['metadata']['namespace']}/{m['metadata']['name']}", apply, m)
                  for m in plan.to_apply]
        ns = body["metadata"]["namespace"]
        calls += [(f"deleting Deployment {ns}/{d.name}", _delete_unit, {"metadata": {
            "namespace": ns, "name": d.name, "uid": d.uid}}) for d in plan.to_delete]
        doing = "creating build Jobs and applying objects"
        writes += _all_at_once(body, calls)
    except _Doing as wrapped:
        failure = _failure_of(wrapped.__cause__, str(wrapped))
    except Exception as e:  # noqa: BLE001 - every failure is a condition: an unforeseen one too (_failure_of)
        failure = _failure_of(e, doing)
    status = dict(plan.status) if plan is not None else _fallback_status(old)
    if failure is not None:
        (log.warning if failure.stalled else log.info)("%s/%s: %s", body["metadata"]["namespace"],
                                                       body["metadata"]["name"], failure.message)
        status = with_failure(status, old.get("conditions") or [], failure.reason, failure.message,
                              stalled=failure.stalled, now=now())
    status.update(extra_status)
    deferred = (failure is None and plan is not None and bool(plan.to_apply) and not extra_status
                and _on_the_way(old, status))
    written, write_failure, status_writes = (False, None, 0) if deferred else _write_status(body, old, status)
    writes += status_writes
    failure = failure or write_failure
    if plan is not None:
        _count_engines(plan)
    metrics.RECONCILES.labels(_outcome_label(plan, failure)).inc()
    return Outcome(plan, failure, written, writes, deferred)


def _on_the_way(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether ``new`` only says progress (Reconciling, no Warning to post): it can wait for
    the reconcile that the objects just applied will trigger."""
    reconciling: Mapping[str, Any] = next(
        (c for c in new.get("conditions") or () if c.get("type") == names.COND_RECONCILING), {})
    return (reconciling.get("status") == "True" and bool(old)
            and not any(e.type == "Warning" for e in events_between(old, new)))


def _failure_of(e: BaseException | None, doing: str) -> Failure:
    if isinstance(e, ApiException):
        return from_api_exception(e, doing)
    if isinstance(e, (HTTPError, OSError, TimeoutError)):
        return from_transport_error(e, doing)
    # A failure no check foresaw (a bug): said in the status and an Event instead of a traceback in a retry loop
    # that left the object's status as it was, and retried with backoff as any transient failure.
    log.error("%s failed unexpectedly", doing, exc_info=e)
    return Failure("InternalError", f"{doing} failed unexpectedly ({type(e).__name__}: {str(e)[:300]}); "
                   "this is a trtop bug: the operator's log has the traceback; retrying with backoff", False)


def _delete_unit(ref: Mapping[str, Any]) -> bool:
    meta = ref["metadata"]
    return delete_deployment(meta["namespace"], meta["name"], meta["uid"])


def _create_claimed(job: Mapping[str, Any], settings: Settings) -> bool:
    try:
        if settings.store_pvc:  # the folders the Job writes, made by us (non-root), not by the kubelet (root)
            make_folders(root_of(settings.store_uri), store_folders(job))
        return create_job(job)
    except BaseException:
        CACHE.release_job(job)
        raise


def _all_at_once(body: Mapping[str, Any], calls: list[tuple[str, Any, Mapping[str, Any]]]) -> int:
    """Run the writes of one plan side by side (each waits on the API, not on us); the first
    failure is raised, with what was being done, after all have finished. Returns the writes."""
    if not calls:
        return 0
    futures = [(doing, manifest, _WRITES.submit(fn, manifest)) for doing, fn, manifest in calls]
    failure: tuple[str, BaseException] | None = None
    writes = 0
    for doing, manifest, future in futures:
        try:
            result = future.result()
        except BaseException as e:  # noqa: BLE001 - re-raised below, the first one wins
            failure = failure or (doing, e)
            continue
        writes += 1
        if manifest.get("kind") == "Job" and result:
            _job_created(body, manifest)
        elif isinstance(result, Mapping):
            CACHE.remember_applied(result)  # the next plan compares with it, not with a lagging watch
    if failure is not None:
        raise _Doing(failure[0]) from failure[1]
    return writes


class _Doing(Exception):
    """Carries what was being done when one of several parallel writes failed."""


def _fallback_status(old: Mapping[str, Any]) -> dict[str, Any]:
    """Without a plan (the facts could not be read) the failure lays over the last status."""
    return {"observedGeneration": old.get("observedGeneration", 0), "phase": old.get("phase", "Progressing"),
            "conditions": list(old.get("conditions") or [])}


def _outcome_label(plan: Plan | None, failure: Failure | None) -> str:
    if failure is not None:
        return "stalled" if failure.stalled else "retry"
    return "invalid-spec" if plan is not None and plan.spec is None else "ok"


def _forget(uid: str, engine_keys: tuple[EngineKey, ...]) -> None:
    """A deleted object's lock, and what was counted for engine keys nobody uses now, leave with it."""
    _locks.pop(uid, None)
    _seen_ready.difference_update(engine_keys)
    _built_by_us.difference_update(engine_keys)


CACHE.when_forgotten(_forget)


def _job_created(body: Mapping[str, Any], job: Mapping[str, Any]) -> None:
    labels = job["metadata"]["labels"]
    metrics.BUILDS.labels("created").inc()
    _built_by_us.add(labels[names.LABEL_ENGINE_KEY])
    log.info("%s/%s: created build Job %s for target %s", body["metadata"]["namespace"], body["metadata"]["name"],
             job["metadata"]["name"], labels[names.LABEL_TARGET])


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


def _write_status(body: Mapping[str, Any], old: Mapping[str, Any],
                  new: Mapping[str, Any]) -> tuple[bool, Failure | None, int]:
    """(written, failure, writes): patch the fields that changed, then post their Events."""
    changed = status_patch(old, new)
    if not changed:
        return False, None, 0
    meta = body["metadata"]
    try:
        CACHE.remember_status_write(patch_status(body, changed))
    except ApiException as e:
        if e.status == 404:  # deleted meanwhile: nothing to report on
            return False, None, 0
        return False, from_api_exception(e, "writing the status"), 0
    except (HTTPError, OSError, TimeoutError) as e:
        return False, from_transport_error(e, "writing the status"), 0
    event = one_event(events_between(old, new))
    if event is None:
        return True, None, 1
    # Logged first: the status is already visible, and the Event may take a round trip.
    (log.warning if event.type == "Warning" else log.info)("%s/%s: %s", meta["namespace"], meta["name"],
                                                           event.message)
    post_event(body, event.type, event.reason, event.message)
    return True, None, 2
