"""Gather the planner's facts for one ModelDeployment: the cluster, then the store.

Called by the reconcile shell. The cluster comes from the watch-fed cache
(``trtop.k8s.cache``). Engine records are immutable (content-addressed), so a
record read once is kept in memory: the store is asked only about keys not yet known
Ready, through one client per process, each read bounded by ``store_timeout_seconds``.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from trtop.api.engine import EngineKey, EngineRecord
from trtop.config import Settings
from trtop.k8s import observe
from trtop.k8s.cache import CACHE
from trtop.planning.facts import ClusterFacts
from trtop.planning.plan import wanted_engine_keys
from trtop.planning.serving import unit_name
from trtop.store import EngineStore, open_store, scoped_uri

# Ready records by (store scope, key): a key names the same engine in every scope, but each scope holds its own copy,
# written by its own build pods, so a record read from one scope is never another scope's (a namespace's tampered
# record would otherwise have been planned for every namespace of that key). Dropped when the engine is collected
# (``forget_record``): kept, the key was planned Ready for good and its pods pointed at an artifact that was gone.
READY_RECORDS: dict[tuple[str, EngineKey], EngineRecord] = {}


def forget_record(scope: str, key: str) -> None:
    """The engine of ``key`` was deleted from ``scope``: it is read from the store again when wanted."""
    READY_RECORDS.pop((scope, EngineKey(key)), None)


@functools.lru_cache(maxsize=256)
def store_client(uri: str) -> EngineStore:
    """One store client per process (per URI: one per store scope). Kept for as many scopes as a fleet has: at 4,
    an operator serving more namespaces built a new client (an S3 session) on most reads."""
    return open_store(uri)


def gather(body: Mapping[str, Any], settings: Settings) -> ClusterFacts:
    """Facts from the watch-fed cache. A unit name trtop is about to take that the cache does
    not hold may still exist without trtop's labels (someone else's): one GET says, so it is
    never taken over; likewise for the Service."""
    meta = body["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], str(meta.get("uid", ""))
    key = (ns, name)
    at = time.time()
    nodes = CACHE.nodes()
    wanted = wanted_engine_keys(body, nodes, at, settings)
    records, store_error = known_records(wanted, settings, ns)
    # The Deployment named like the object: trtop's single Deployment from before serving units.
    legacy = CACHE.deployment(key, uid) if CACHE.knows_deployment(key) else None
    if legacy is not None and (legacy.foreign or legacy.target):
        legacy = None  # someone else's, or a unit of another ModelDeployment: not ours to move
    # Asked once when the object is new and once more when a ready engine makes the plan
    # want to apply them; a known absence in between is not asked again (one GET per
    # reconcile was most of a reconcile's time at N=300).
    stage = "serving" if records else "new"
    service = CACHE.service(key, uid) if CACHE.knows_service(key) else _unless_known_absent(
        key, "Service", stage, lambda: observe.observe_service(ns, name, uid))
    foreign = []
    for unit in sorted({unit_name(name, r.target) for r in records.values()}):
        if CACHE.knows_deployment((ns, unit)):
            fact = CACHE.deployment((ns, unit), uid)
        else:
            fact = _unless_known_absent((ns, unit), "Deployment", stage,
                                        functools.partial(observe.observe_deployment, ns, unit, uid))
        if fact is not None and fact.foreign:
            foreign.append(unit)
    return ClusterFacts(nodes=nodes, jobs=CACHE.jobs(ns, wanted), records=records, units=CACHE.units(uid),
                        deployment=legacy, pods=CACHE.pod_facts(key), foreign_units=tuple(foreign), service=service,
                        store_error=store_error, now=at, full_targets=CACHE.full_targets(ns),
                        admission_state=CACHE.admission_state(ns))


F = TypeVar("F")


def _unless_known_absent(key: tuple[str, str], kind: str, stage: str, get: Callable[[], F | None]) -> F | None:
    """``get()`` (one GET), unless a GET at this stage found nothing already."""
    if CACHE.known_absent(key, kind, stage):
        return None
    fact = get()
    if fact is None:
        CACHE.note_absent(key, kind, stage)
    return fact


def known_records(keys: tuple[EngineKey, ...], settings: Settings,
                  namespace: str) -> tuple[dict[EngineKey, EngineRecord], str]:
    """Records of ``keys`` in ``namespace``'s store scope: from memory when known Ready, else read from the store
    (then kept)."""
    scope = settings.store_scope(namespace)
    missing = [k for k in keys if (scope, k) not in READY_RECORDS]
    error = ""
    if missing:
        found, error = observe.read_records(store_client(scoped_uri(settings.store_uri, scope)), missing,
                                            settings.store_timeout_seconds)
        READY_RECORDS.update(((scope, k), r) for k, r in found.items())
    return {k: READY_RECORDS[(scope, k)] for k in keys if (scope, k) in READY_RECORDS}, error
