"""The whole reconcile decision for one ModelDeployment, as data.

``plan_model_deployment(md, facts, settings, autoscaled_replicas, now)`` returns what to
create/apply and the status to write. Rules it encodes:
- one build Job per missing engine (``Pending``), never for Ready/Building/Failed ones;
- one serving unit per architecture with a ready engine (``trtop.planning.units``): the
  first serves as soon as its engine is ready, others join as theirs become ready, and the
  asked capacity is split over them by throughput and free GPUs (``planning.capacity``);
- model update (a live unit serves another model revision): keep serving the old engines
  while the new ones build; roll once no new engine is still building;
- no ready engine: leave the live units alone (never take serving down);
- the store could not be read: create nothing, change no serving (StoreUnavailable);
- a spec (or a name) trtop cannot honour: the Stalled/InvalidSpec status, nothing else.
It never raises for anything a tenant wrote.
"""
from __future__ import annotations

import math
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
from trtop.planning.serving import build_service, model_revision, selector_string, servable
from trtop.planning.status import (
    condition_dicts, conditions_for, engine_entry, invalid_spec_status, phase_of, with_failure,
)
from trtop.planning.targets import discover_targets, why_no_gpu_node_is_a_target, with_grace
from trtop.planning.units import plan_units

STORE_UNAVAILABLE = "StoreUnavailable"
NOT_OWNED = "NotOwned"
RECHECK_SECONDS = 10.0


@dataclass(frozen=True)
class Plan:
    spec: ModelDeploymentSpec | None  # None: the spec is invalid (status says why)
    targets: tuple[Target, ...]
    engines: tuple[EngineStatus, ...]
    jobs_to_create: tuple[Manifest, ...]
    units: tuple[Manifest, ...]  # every serving unit's Deployment; () leaves the live ones as they are
    service: Manifest | None
    replicas: int  # capacity units asked for (the scale subresource's unit)
    status: dict[str, Any] = field(default_factory=dict)
    # Of service/units, those whose content differs from what is live (by applied hash).
    to_apply: tuple[Manifest, ...] = ()
    # Look again after this many seconds even without an event: a Job succeeded but its engine
    # is not in the store yet (no watch says when it appears).
    recheck_after: float | None = None
    # Units whose architecture left (and the old single Deployment) once the others carry their load.
    to_delete: tuple[DeploymentFact, ...] = ()


def desired_replicas(spec: ModelDeploymentSpec, current: int | None, autoscaled: int | None) -> int:
    """Capacity units to serve: the autoscaler's in builtin mode, else the scale subresource's.

    ``current``: what was asked for last time (``status.desiredReplicas``, or the old single
    Deployment's replicas), the starting point when nobody says otherwise.
    """
    s = spec.scaling
    if s.mode == "builtin":
        if autoscaled is not None:
            return autoscaled
        # A new object starts with one replica even where it may scale to zero, as Knative's initial scale does:
        # its first rollout shows the engine serves, and the idle scale-down window takes it to zero after.
        now = current if current is not None else max(s.min_replicas, 1)
        return max(s.min_replicas, min(s.max_replicas, now))
    if spec.replicas is not None:
        return spec.replicas
    return max(s.min_replicas, 1) if s.mode == "none" or current is None else current


def _asked_before(previous: Mapping[str, Any], legacy: DeploymentFact | None) -> int | None:
    value = previous.get("desiredReplicas")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return legacy.replicas if legacy is not None and not legacy.foreign else None


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
        return Plan(None, (), (), (), (), None, 0, invalid_spec_status(md, str(e), now))
    meta = md.get("metadata", {})
    previous = (md.get("status") or {})
    raw_nodes = facts.nodes  # free GPUs and schedulable now: where new pods can go
    facts = replace(facts, nodes=with_grace(facts.nodes, facts.now, settings.node_grace_seconds))
    targets = discover_targets(spec, facts.nodes)
    engines = engine_statuses(spec, targets, facts, settings, str(meta.get("namespace") or ""))
    jobs: tuple[Manifest, ...] = ()
    if not facts.store_error:  # an engine we could not look up may exist: build nothing
        jobs = tuple(build_job(md, spec, e, settings) for e in engines if should_create_job(e))
        # The shell creates them before it writes this status: they are building.
        engines = tuple(replace(e, state="Building", message="build Job created") if should_create_job(e) else e
                        for e in engines)
    legacy = facts.deployment if facts.deployment is not None and not facts.deployment.foreign else None
    replicas = desired_replicas(spec, _asked_before(previous, legacy), autoscaled_replicas)
    to_serve = servable(engines)
    revision = model_revision(spec)
    lives = [u for u in facts.units if not u.foreign] + ([legacy] if legacy is not None else [])
    hold = ""
    updating = any(u.model_revision != revision for u in lives)
    still_building = [e for e in engines if e.state in ("Building", "Pending")]
    if facts.store_error:
        hold = f"{facts.store_error}; serving is left as it is until the store answers"
    elif updating and still_building:
        hold = f"serving the previous model revision until {len(still_building)} new engine(s) finish building"
    elif not to_serve and lives:
        hold = "no engine of the current spec is ready; the live serving units keep serving what they have"
    serving = plan_units(md, spec, settings, serve=to_serve, targets=targets, units=facts.units, legacy=legacy,
                         full=facts.full_targets, admission_state=facts.admission_state,
                         pods=facts.pods, nodes=raw_nodes, desired=float(replicas), previous=previous,
                         hold=bool(hold))
    limit = scaling_limit or (
        f"{serving.short:g} replica(s) of capacity wait for free GPUs (no architecture with a ready engine has "
        "room): their pods stay Pending until GPUs free up or nodes join" if serving.short > 0 else "")
    conds = conditions_for(engines, serving, hold_message=hold, scaling_limit=limit,
                           no_targets_why="" if targets else why_no_gpu_node_is_a_target(spec, facts.nodes))
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
        "servedEngines": [e.key for e in to_serve] if serving.manifests else
                         sorted({k for u in lives for k in u.engine_keys}),
        "previousEngines": _previous_engines(previous, lives, revision, spec.rollout.keep_previous_engines),
        "replicas": math.floor(serving.live + 1e-6),
        "readyReplicas": math.floor(serving.ready + 1e-6),
        "desiredReplicas": replicas,
        "selector": selector_string(meta.get("name", "")),
        "units": list(serving.units),
        "capacityUnit": serving.capacity_unit,
        "warnings": warnings,
    }
    service = build_service(md, spec) if to_serve or lives else None
    foreign = [f"{kind} {meta.get('namespace')}/{name}" for kind, name, mine in (
        [("Service", meta.get("name"), facts.service is None or not facts.service.foreign)]
        + [("Deployment", m["metadata"]["name"], m["metadata"]["name"] not in facts.foreign_units)
           for m in serving.manifests]) if not mine]
    if foreign:
        status = with_failure(status, previous.get("conditions", []), NOT_OWNED, (
            f"{' and '.join(foreign)} already exist(s) and is not controlled by this ModelDeployment: trtop "
            "leaves it alone; delete it or give the ModelDeployment another name"), stalled=True, now=now)
        return Plan(spec, targets, engines, (), (), None, replicas, status)
    if facts.store_error:
        status = with_failure(status, previous.get("conditions", []), STORE_UNAVAILABLE, hold, stalled=False, now=now)
    service = with_applied_hash(service) if service is not None else None
    to_apply = ((service,) if service is not None and (facts.service is None or facts.service.applied_hash
                                                        != applied_hash(service)) else ()) + serving.to_apply
    unpublished = any(e.state == "Failed" and (j := facts.jobs.get(e.key)) is not None and j.state == "succeeded"
                      for e in engines)
    # A node down within its grace period: look again when the period ends (its type may leave).
    graces = [settings.node_grace_seconds - (facts.now - n.down_since) for n in raw_nodes
              if not n.schedulable and n.down_since is not None and facts.now > 0]
    rechecks = [RECHECK_SECONDS] if unpublished else []
    rechecks += [g + 1.0 for g in graces if g > 0]
    return Plan(spec, targets, engines, jobs, serving.manifests, service, replicas, status, to_apply,
                min(rechecks) if rechecks else None, serving.to_delete)


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
        out.append("the cpu engine is built but not served: serving units request a GPU when GPU "
                   "engines exist; use a separate ModelDeployment with targets [cpu] to serve on CPU nodes")
    return out


def _previous_engines(previous: Mapping[str, Any], lives: Sequence[DeploymentFact], revision: str,
                      keep: int) -> list[str]:
    """Engines of the revision being replaced: kept (never garbage-collected) for rollback."""
    kept = list(previous.get("previousEngines") or [])
    replaced = [k for u in lives if u.model_revision and u.model_revision != revision for k in u.engine_keys]
    kept = [k for k in dict.fromkeys(replaced) if k not in kept] + kept
    # ``keep`` revisions' worth, a revision being as many engines as the live units serve.
    per_revision = max(sum(len(u.engine_keys) for u in lives), 1) if lives else max(len(kept), 1)
    return kept[: max(keep, 0) * per_revision]
