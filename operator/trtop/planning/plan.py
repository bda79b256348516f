"""The whole reconcile decision for one ModelDeployment, as data.

``plan_model_deployment(md, facts, settings, autoscaled_replicas, now)`` returns what to
create/apply and the status to write. Rules it encodes:
- one build Job per missing engine (``Pending``), never for Ready/Building/Failed ones;
- first rollout: serve as soon as one engine is ready, widen as others become ready;
- model update (the live Deployment serves another model revision): keep serving the
  old engines while the new ones build; roll once no new engine is still building;
- no ready engine: leave any live Deployment alone (never take serving down);
- the store could not be read: create nothing, change no serving (StoreUnavailable);
- a spec (or a name) trtop cannot honour: the Stalled/InvalidSpec status, nothing else.
It never raises for anything a tenant wrote.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from trtop.api.engine import EngineKey
from trtop.api.errors import SpecError
from trtop.api.spec import ModelDeploymentSpec, parse_spec
from trtop.api.validation import check_name
from trtop.api.targets import Target
from trtop.config import Settings
from trtop.planning.builds import build_job, should_create_job
from trtop.planning.admission import check_spec_trust
from trtop.planning.common import Manifest, applied_hash, with_applied_hash
from trtop.planning.engines import EngineStatus, build_engine_request, engine_statuses
from trtop.planning.facts import ClusterFacts, DeploymentFact, NodeFact
from trtop.planning.serving import (
    build_deployment, build_service, engine_set_hash, model_revision, selector_string, servable,
)
from trtop.planning.status import (
    condition_dicts, conditions_for, engine_entry, invalid_spec_status, phase_of, with_failure,
)
from trtop.planning.targets import discover_targets, with_grace

STORE_UNAVAILABLE = "StoreUnavailable"
NOT_OWNED = "NotOwned"
RECHECK_SECONDS = 10.0


@dataclass(frozen=True)
class Plan:
    spec: ModelDeploymentSpec | None  # None: the spec is invalid (status says why)
    targets: tuple[Target, ...]
    engines: tuple[EngineStatus, ...]
    jobs_to_create: tuple[Manifest, ...]
    deployment: Manifest | None  # None: leave the live Deployment (if any) as it is
    service: Manifest | None
    replicas: int
    status: dict[str, Any] = field(default_factory=dict)
    # Of service/deployment, those whose content differs from what is live (by applied hash).
    to_apply: tuple[Manifest, ...] = ()
    # Look again after this many seconds even without an event: a Job succeeded but its engine
    # is not in the store yet (no watch says when it appears).
    recheck_after: float | None = None


def desired_replicas(spec: ModelDeploymentSpec, live: DeploymentFact | None, autoscaled: int | None) -> int:
    """Replicas for the Deployment: the autoscaler's in builtin mode, else the scale subresource's."""
    s = spec.scaling
    if s.mode == "builtin":
        if autoscaled is not None:
            return autoscaled
        current = live.replicas if live is not None else s.min_replicas
        return max(s.min_replicas, min(s.max_replicas, current))
    if spec.replicas is not None:
        return spec.replicas
    return max(s.min_replicas, 1) if s.mode == "none" else (live.replicas if live else max(s.min_replicas, 1))


def plan_model_deployment(
    md: Mapping[str, Any], facts: ClusterFacts, settings: Settings, *, autoscaled_replicas: int | None = None,
    scaling_limit: str = "", now: str,
) -> Plan:
    """The plan; for a spec trtop cannot honour, a Plan with ``spec=None`` and the InvalidSpec status."""
    try:
        check_name((md.get("metadata") or {}).get("name"))
        spec = parse_spec(md.get("spec") or {})
        check_spec_trust(spec, settings)
    except SpecError as e:
        return Plan(None, (), (), (), None, None, 0, invalid_spec_status(md, str(e), now))
    meta = md.get("metadata", {})
    foreign = [f"{kind} {meta.get('namespace')}/{meta.get('name')}" for kind, fact in
               (("Deployment", facts.deployment), ("Service", facts.service)) if fact is not None and fact.foreign]
    facts = replace(facts, nodes=with_grace(facts.nodes, facts.now, settings.node_grace_seconds),
                    deployment=None if facts.deployment is not None and facts.deployment.foreign else facts.deployment)
    targets = discover_targets(spec, facts.nodes)
    engines = engine_statuses(spec, targets, facts, settings, str(meta.get("namespace") or ""))
    jobs: tuple[Manifest, ...] = ()
    if not facts.store_error:  # an engine we could not look up may exist: build nothing
        jobs = tuple(build_job(md, spec, e, settings) for e in engines if should_create_job(e))
        # The shell creates them before it writes this status: they are building.
        engines = tuple(replace(e, state="Building", message="build Job created") if should_create_job(e) else e
                        for e in engines)
    replicas = desired_replicas(spec, facts.deployment, autoscaled_replicas)
    live = facts.deployment
    to_serve = servable(engines)
    revision = model_revision(spec)
    deployment: Manifest | None = None
    hold = ""
    updating = live is not None and live.model_revision != revision
    still_building = [e for e in engines if e.state in ("Building", "Pending")]
    if facts.store_error:
        hold = f"{facts.store_error}; serving is left as it is until the store answers"
    elif updating and still_building:
        hold = f"serving the previous model revision until {len(still_building)} new engine(s) finish building"
    elif to_serve:
        deployment = build_deployment(md, spec, to_serve, replicas, settings)
    elif live is not None:
        hold = "no engine of the current spec is ready; the live Deployment keeps serving what it has"
    rollout_pending = (
        (deployment is not None and live is None)
        or (deployment is not None and live is not None and (
            live.engine_set_hash != engine_set_hash(to_serve) or live.model_revision != revision))
        or (live is not None and live.updated_replicas < live.replicas)
    )
    conds = conditions_for(engines, live, replicas, rollout_pending=rollout_pending, hold_message=hold,
                           scaling_limit=scaling_limit)
    previous = (md.get("status") or {})
    warnings = spec_warnings(spec, engines, to_serve)
    generation = int(meta.get("generation", 0))
    ready_count = sum(1 for e in engines if e.state == "Ready")
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase_of(conds),
        "message": next(c.message for c in conds if c.type == "Ready"),
        "conditions": condition_dicts(conds, previous.get("conditions", []), now, generation),
        "engines": [engine_entry(e) for e in engines],
        "enginesReady": f"{ready_count}/{len(engines)}",
        "targets": [str(t) for t in targets],
        "modelRevision": revision,
        "servedEngines": [e.key for e in to_serve] if deployment is not None else
                         list(live.engine_keys if live else ()),
        "previousEngines": _previous_engines(previous, live, revision, spec.rollout.keep_previous_engines),
        "replicas": live.replicas if live else 0,
        "readyReplicas": live.ready_replicas if live else 0,
        "desiredReplicas": replicas,
        "selector": selector_string(meta.get("name", "")),
        "warnings": warnings,
    }
    service = build_service(md, spec) if to_serve or live else None
    if foreign:
        status = with_failure(status, previous.get("conditions", []), NOT_OWNED, (
            f"{' and '.join(foreign)} already exist(s) and is not controlled by this ModelDeployment: trtop "
            "leaves it alone; delete it or give the ModelDeployment another name"), stalled=True, now=now)
        return Plan(spec, targets, engines, (), None, None, replicas, status)
    if facts.store_error:
        status = with_failure(status, previous.get("conditions", []), STORE_UNAVAILABLE, hold, stalled=False, now=now)
    deployment = with_applied_hash(deployment) if deployment is not None else None
    service = with_applied_hash(service) if service is not None else None
    to_apply = tuple(m for m, fact in ((service, facts.service), (deployment, live))
                     if m is not None and (fact is None or fact.applied_hash != applied_hash(m)))
    unpublished = any(e.state == "Failed" and (j := facts.jobs.get(e.key)) is not None and j.state == "succeeded"
                      for e in engines)
    return Plan(spec, targets, engines, jobs, deployment, service, replicas, status, to_apply,
                RECHECK_SECONDS if unpublished else None)


def wanted_engine_keys(md: Mapping[str, Any], nodes: Sequence[NodeFact], now: float,
                       settings: Settings) -> tuple[EngineKey, ...]:
    """The engine keys a plan of ``md`` will ask the store about (none for an invalid spec)."""
    try:
        spec = parse_spec(md.get("spec") or {})
    except SpecError:
        return ()
    targets = discover_targets(spec, with_grace(nodes, now, settings.node_grace_seconds))
    return tuple(build_engine_request(spec, t, settings, str((md.get("metadata") or {}).get("namespace") or "")).key for t in targets)


def spec_warnings(spec: ModelDeploymentSpec, engines: Sequence[EngineStatus],
                  served: Sequence[EngineStatus]) -> list[str]:
    """Settings trtop accepts but cannot honour as written: said out loud, never silently ignored."""
    out = []
    if spec.scaling.mode == "builtin" and spec.replicas is not None:
        out.append(f"spec.replicas={spec.replicas} is ignored because scaling.mode is builtin (trtop scales "
                   f"between minReplicas and maxReplicas); set scaling.mode to none or external to fix replicas")
    cpu_ready = [e for e in engines if e.state == "Ready" and e.target.is_cpu]
    if cpu_ready and served and not served[0].target.is_cpu:
        out.append("the cpu engine is built but not served: one serving Deployment requests a GPU when GPU "
                   "engines exist; use a separate ModelDeployment with targets [cpu] to serve on CPU nodes")
    return out


def _previous_engines(previous: Mapping[str, Any], live: DeploymentFact | None, revision: str,
                      keep: int) -> list[str]:
    """Engines of the revision being replaced: kept (never garbage-collected) for rollback."""
    kept = list(previous.get("previousEngines") or [])
    if live is not None and live.model_revision and live.model_revision != revision:
        kept = [k for k in live.engine_keys if k not in kept] + kept
    # ``keep`` revisions' worth, a revision being as many engines as the live one serves.
    per_revision = max(len(live.engine_keys), 1) if live is not None else max(len(kept), 1)
    return kept[: max(keep, 0) * per_revision]
