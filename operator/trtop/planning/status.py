"""The status contract: kstatus conditions, phase, ``engines[]``, and the Events to post.

Conditions keep their ``lastTransitionTime`` while their status is unchanged, so a
reconcile that changes nothing writes nothing new. ``observedGeneration`` is always the
object's own generation (never a child's), so ``kubectl wait``, Helm, Argo CD and Flux
can trust it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trtop import names
from trtop.planning.engines import EngineStatus
from trtop.planning.units import Serving


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


def engine_entry(e: EngineStatus) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "key": e.key, "target": str(e.target), "cc": e.target.cc, "product": e.target.product or "",
        "state": e.state, "message": e.message[-1024:], "job": e.job_name or "",
    }
    if e.record is not None:
        r = e.record
        entry.update({
            "artifact": f"{e.key}/{r.artifact}", "backend": r.backend,
            "buildSeconds": round(float(r.build_seconds), 2),
            "parityMaxAbsError": float(r.parity.get("max_abs_error", 0.0)),
            "benchmark": {k: {m: round(float(v), 3) for m, v in d.items()}
                          for k, d in r.benchmark.items() if isinstance(d, Mapping)},
        })
        if r.buckets:  # the batch sizes the engine was built/profiled for; its servers warm exactly these
            entry["batchSizes"] = list(r.buckets)
    return entry


def conditions_for(
    engines: Sequence[EngineStatus], serving: Serving, *, hold_message: str, scaling_limit: str = "",
    no_targets_why: str = "",
) -> list[Condition]:
    """Conditions of one plan. Ready = serving the current spec with the capacity asked for:
    an engine building for a joining architecture, or a unit coming or going while the others
    carry the load, leaves it True (Reconciling says what is still moving)."""
    ready = [e for e in engines if e.state == "Ready"]
    failed = [e for e in engines if e.state in ("Failed", "Unschedulable")]
    busy = [e for e in engines if e.state in ("Building", "Pending")]
    conds: list[Condition] = []
    if not engines:
        conds.append(Condition(names.COND_ENGINES_READY, False, "NoTargets",
                               "no GPU architecture matches: add GPU nodes with GPU Feature Discovery labels, "
                               "widen serving.nodeSelector, or list engine.targets explicitly (nodes whose GPUs are "
                               "MIG slices count only with engine.hardwareCompatibility other than none)"
                               + (f"; {no_targets_why}" if no_targets_why else "")))
    elif not failed and not busy:
        conds.append(Condition(names.COND_ENGINES_READY, True, "AllEnginesReady",
                               f"{len(ready)}/{len(engines)} engines ready: " + ", ".join(str(e.target) for e in ready)))
    elif failed:
        detail = "; ".join(f"{e.target}: {e.message}" for e in failed)
        conds.append(Condition(names.COND_ENGINES_READY, False, "BuildFailed",
                               f"{len(ready)}/{len(engines)} engines ready; failed: {detail}"[:2048]))
    else:
        conds.append(Condition(names.COND_ENGINES_READY, False, "Building",
                               f"{len(ready)}/{len(engines)} engines ready; building: "
                               + ", ".join(str(e.target) for e in busy)))
    capacity = f"{serving.ready:g}/{serving.desired:g} replicas of capacity ready"
    if serving.exists and serving.desired == 0 and serving.live == 0:
        conds.append(Condition(names.COND_AVAILABLE, True, "ScaledToZero", "scaled to zero replicas"))
    elif serving.ready > 0:
        conds.append(Condition(names.COND_AVAILABLE, True, "MinimumReplicasAvailable", capacity))
    elif not serving.exists:
        conds.append(Condition(names.COND_AVAILABLE, False, "NoServingDeployment",
                               "serving starts once an engine is ready"))
    else:
        conds.append(Condition(names.COND_AVAILABLE, False, "ReplicasNotReady", capacity))
    reconciling_why = []
    if busy:
        reconciling_why.append(f"building {len(busy)} engine(s)")
    if serving.rollout_pending:
        reconciling_why.append(serving.rollout_pending)
    if hold_message:
        reconciling_why.append(hold_message)
    conds.append(Condition(names.COND_RECONCILING, bool(reconciling_why),
                           "Progressing" if reconciling_why else "Reconciled",
                           "; ".join(reconciling_why)[:2048] or "everything matches the spec"))
    stalled_reason = ""
    if not engines:
        stalled_reason = "NoTargets"
    elif not ready and not busy:
        stalled_reason = "AllBuildsFailed"
    conds.append(Condition(names.COND_STALLED, bool(stalled_reason), stalled_reason or "NotStalled",
                           conds[0].message if stalled_reason else "making progress or done"))
    conds.append(Condition(names.COND_DEGRADED, bool(failed and ready), "SomeTargetsFailed" if failed and ready else "AllTargetsHealthy",
                           "serving on the architectures that work; " + conds[0].message if failed and ready
                           else "no target is failing"))
    if serving.refused:  # first: what a person must change is named, where a GPU shortage only waits
        conds.append(Condition(names.COND_SCALING_LIMITED, True, "PodsRefused",
                               f"the API server refused to create pods of {serving.refused} (a ResourceQuota, "
                               "LimitRange or admission webhook of the namespace): raise the quota or lower the "
                               "replicas"[:2048]))
    elif scaling_limit:
        conds.append(Condition(names.COND_SCALING_LIMITED, True, "GPUCapacity", scaling_limit))
    else:
        conds.append(Condition(names.COND_SCALING_LIMITED, False, "WithinCapacity", "the cluster can host the desired replicas"))
    available = next(c for c in conds if c.type == names.COND_AVAILABLE).status
    is_ready = (available and serving.exists and serving.capacity_met and not hold_message and not stalled_reason)
    why_not = [c.message for c in conds if c.type == names.COND_STALLED and c.status]
    if not why_not and available and not serving.capacity_met:
        why_not.append(capacity)
    why_not += [m for m in reconciling_why if m not in why_not]
    conds.insert(0, Condition(names.COND_READY, is_ready, "Ready" if is_ready else "NotReady",
                              "serving the current spec" if is_ready else
                              "; ".join(why_not)[:2048] or conds[1].message))
    return conds


def phase_of(conds: Sequence[Condition]) -> str:
    by = {c.type: c for c in conds}
    if by[names.COND_STALLED].status:
        return "Failed" if by[names.COND_STALLED].reason == "AllBuildsFailed" else "Stalled"
    if by[names.COND_READY].status:
        return "Degraded" if by[names.COND_DEGRADED].status else "Ready"
    if by[names.COND_ENGINES_READY].reason in ("Building",) or not by[names.COND_AVAILABLE].status:
        return "Building" if by[names.COND_ENGINES_READY].reason == "Building" else "Progressing"
    return "Progressing"


def condition_dicts(conds: Sequence[Condition], previous: Sequence[Mapping[str, Any]], now: str,
                    generation: int) -> list[dict[str, Any]]:
    prev = {c.get("type"): c for c in previous}
    out = []
    for c in conds:
        status = "True" if c.status else "False"
        old = prev.get(c.type)
        since = old.get("lastTransitionTime", now) if old and old.get("status") == status else now
        out.append({"type": c.type, "status": status, "reason": c.reason, "message": c.message,
                    "lastTransitionTime": since, "observedGeneration": generation})
    return out


# Events are for people: a Warning for every failure, at once; on the way to Ready, one
# Normal Event when it gets there (not one per step: a fleet of thousands would write three
# times as many Events, and nobody acts on "building"). So these are no Events of their own:
# an engine Pending or Building (status.engines[] and the build Job show it), an engine Ready
# while the phase is still Building/Progressing or just becoming Ready (the PhaseReady Event
# lists the engines), and the phase passing through Building or Progressing.
QUIET_ENGINE_STATES = ("Pending", "Building")
QUIET_PHASES = ("Building", "Progressing")
# Ready's reasons when a plan could not be carried out (see ``with_failure``): each is an Event.
STALLED_REASONS = ("InvalidSpec", "ApplyRejected", "NotOwned")
FAILURE_REASONS = (*STALLED_REASONS, "StoreUnavailable", "APIUnavailable", "InternalError")


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386, what the status is written with) that makes ``old`` into ``new`` for the
    fields ``new`` has; {} when nothing differs. A merge patch keeps what it does not name, so within an object
    field the keys ``new`` no longer has are named null: without that, a ``capacityUnit`` that went from
    ``benchmark`` to ``equal`` (every hold) kept its target and throughput on the server, never equalled the plan,
    and was written again on every reconcile. Fields ``new`` lacks at the top are left as they are."""
    return {k: _patch_value(old.get(k), v) for k, v in new.items() if old.get(k) != v}


def _patch_value(before: Any, after: Any) -> Any:
    if not (isinstance(before, Mapping) and isinstance(after, Mapping)):
        return after
    gone: dict[str, Any] = {k: None for k in before if k not in after}
    return gone | {k: _patch_value(before.get(k), v) for k, v in after.items() if before.get(k) != v}


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or () if isinstance(c, Mapping) and c.get("type") == type_), {})


def events_between(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[Event]:
    """Events a person wants to see (see QUIET_*): engine state changes (one Event per new
    state, listing every engine that reached it in this reconcile) and each phase change."""
    events: list[Event] = []
    old_engines = {e.get("key"): e for e in previous.get("engines", [])}
    reached: dict[str, list[str]] = {}
    # Engines Ready on the way to Ready, or as it gets there: the PhaseReady Event names them.
    settling = current.get("phase") in QUIET_PHASES or (
        current.get("phase") in ("Ready", "Degraded") and previous.get("phase") != current.get("phase"))
    folded: list[str] = []  # engines Ready in this step, told by the phase Event
    for e in current.get("engines", []):
        before = old_engines.get(e["key"], {}).get("state")
        if before == e["state"] or e["state"] in QUIET_ENGINE_STATES:
            continue
        text = f"engine {e['key']} for {e['target']}: {before or 'new'} -> {e['state']}"
        if e["state"] == "Ready" and "buildSeconds" in e:
            text += f" (built in {e['buildSeconds']} s, parity max abs error {e.get('parityMaxAbsError', 0):.3g})"
        elif e.get("message"):
            text += f": {e['message']}"
        (folded if e["state"] == "Ready" and settling else reached.setdefault(e["state"], [])).append(text)
    if settling and previous.get("phase") in QUIET_PHASES:
        # Engines that turned Ready in an earlier quiet step (its status was written without an
        # Event): the phase Event that ends the quiet steps tells them too.
        folded += [f"engine {e['key']} for {e['target']}: Ready (built in {e['buildSeconds']} s, parity max abs "
                   f"error {e.get('parityMaxAbsError', 0):.3g})" for e in current.get("engines", [])
                   if e["state"] == "Ready" and "buildSeconds" in e
                   and old_engines.get(e["key"], {}).get("state") == "Ready"]
    for state, texts in reached.items():
        kind = "Warning" if state in ("Failed", "Unschedulable") else "Normal"
        events.append(Event(kind, f"Engine{state}", "; ".join(texts)[:1024]))
    old_units = {u.get("name"): u for u in previous.get("units") or [] if isinstance(u, Mapping)}
    new_units = {u.get("name"): u for u in current.get("units") or [] if isinstance(u, Mapping)}
    added = [f"{n} for {u.get('target')}" for n, u in new_units.items() if n not in old_units]
    removed = [str(n) for n in old_units if n not in new_units]
    if added and old_units:  # the first units are the first rollout: its PhaseReady Event tells it
        events.append(Event("Normal", "UnitAdded", f"serving unit(s) added: {', '.join(added)}"[:1024]))
    if removed and "units" in current:
        events.append(Event("Normal", "UnitRemoved", f"serving unit(s) removed: {', '.join(removed)}"[:1024]))
    in_place = [str(n) for n, u in new_units.items()
                if u.get("rollout") == "InPlace" and (old_units.get(n) or {}).get("rollout") != "InPlace"]
    if in_place:  # serving one pod fewer for a while: a person should know why
        events.append(Event("Normal", "RolloutInPlace", (
            f"rolling {', '.join(in_place)} one pod fewer at a time: no GPU of its type is free for a new pod beside "
            "the old ones (spec.rollout.whenFull: ReplaceInPlace; Wait keeps every old pod)")[:1024]))
    for warning in current.get("warnings", []):
        if warning not in previous.get("warnings", []):
            events.append(Event("Warning", "SpecIgnored", warning[:1024]))
    limited = _condition(current, names.COND_SCALING_LIMITED)
    if limited.get("reason") == "PodsRefused" != _condition(previous, names.COND_SCALING_LIMITED).get("reason"):
        events.append(Event("Warning", "PodsRefused", str(limited.get("message", ""))[:1024]))
    failing = _condition(current, names.COND_READY)
    before = _condition(previous, names.COND_READY)
    if failing.get("reason") in FAILURE_REASONS and (
            failing.get("reason") != before.get("reason")
            or (failing.get("reason") in STALLED_REASONS and failing.get("message") != before.get("message"))):
        events.append(Event("Warning", str(failing["reason"]), str(failing.get("message", ""))[:1024]))
    if previous.get("phase") != current.get("phase") and current.get("phase") not in QUIET_PHASES:
        kind = "Warning" if current.get("phase") in ("Failed", "Stalled", "Degraded") else "Normal"
        text = f"phase {previous.get('phase') or 'new'} -> {current.get('phase')}: {current.get('message', '')}"
        engines = _condition(current, names.COND_ENGINES_READY).get("message")
        if current.get("phase") in ("Ready", "Degraded") and engines:
            text += "; ".join(["", engines, *folded])  # what the quiet steps before it did
        events.append(Event(kind, f"Phase{current.get('phase')}", text[:1024]))
    return events


def _merge_conditions(previous: Sequence[Mapping[str, Any]], override: Sequence[Mapping[str, Any]],
                      now: str, generation: int) -> list[dict[str, Any]]:
    """Previous conditions with ``override`` laid over them (type, status, reason, message),
    each transition time kept while its status is unchanged."""
    prev = {c.get("type"): c for c in previous}
    out = []
    for c in override:
        old = prev.get(c["type"]) or {}
        since = old.get("lastTransitionTime", now) if old.get("status") == c["status"] else now
        out.append({**c, "lastTransitionTime": since, "observedGeneration": generation})
    types = {c["type"] for c in override}
    return out + [dict(c) for t, c in prev.items() if t not in types]


def invalid_spec_status(md: Mapping[str, Any], message: str, now: str) -> dict[str, Any]:
    """The status of a spec trtop cannot honour: Stalled/InvalidSpec, serving left as it is.

    Other conditions (e.g. Available of a Deployment still serving the last good spec) stay.
    """
    gen = int((md.get("metadata") or {}).get("generation") or 0)
    text = f"{message} (fix the spec; nothing was built or changed)"
    over = [{"type": t, "status": s, "reason": "InvalidSpec", "message": text} for t, s in (
        (names.COND_READY, "False"), (names.COND_STALLED, "True"), (names.COND_RECONCILING, "False"))]
    previous = (md.get("status") or {}).get("conditions") or []
    return {"observedGeneration": gen, "phase": "Stalled", "message": text,
            "conditions": _merge_conditions(previous, over, now, gen)}


def with_failure(status: Mapping[str, Any], previous: Sequence[Mapping[str, Any]], reason: str, message: str, *,
                 stalled: bool, now: str) -> dict[str, Any]:
    """``status`` after its plan could not be carried out.

    ``stalled``: a person must act (the API server refused an object: its own message, or an
    object of the same name that trtop does not control); else trtop retries with backoff and
    says why in Reconciling. Either way Ready is False with the reason.
    """
    gen = int(status.get("observedGeneration") or 0)
    over = [
        {"type": names.COND_READY, "status": "False", "reason": reason, "message": message},
        {"type": names.COND_STALLED, "status": "True" if stalled else "False",
         "reason": reason if stalled else "NotStalled", "message": message if stalled else "retrying"},
        {"type": names.COND_RECONCILING, "status": "False" if stalled else "True", "reason": reason,
         "message": message},
    ]
    # Conditions of this plan (EnginesReady, Available, ...) under the override, times from ``previous``.
    planned = [c for c in status.get("conditions") or () if c.get("type") not in {o["type"] for o in over}]
    conds = _merge_conditions(previous, over, now, gen)
    by_type = {c["type"]: c for c in conds}
    for c in planned:
        by_type[c["type"]] = dict(c)
    ordered = [by_type[t] for t in names.CONDITION_TYPES if t in by_type]
    ordered += [c for t, c in by_type.items() if t not in names.CONDITION_TYPES]
    return {**status, "phase": "Stalled" if stalled else status.get("phase", "Progressing"), "message": message,
            "conditions": ordered}


def one_event(events: Sequence[Event]) -> Event | None:
    """The changes of one reconcile as one Event (fewer API writes; ``kubectl describe`` reads
    the same): Warning if any part is, the reason of the first Warning else of the first part
    (engines first, the phase change last), every message joined."""
    if not events:
        return None
    warnings = [e for e in events if e.type == "Warning"]
    lead = warnings[0] if warnings else events[0]
    message = "; ".join(e.message for e in ([lead] + [e for e in events if e is not lead]))
    return Event("Warning" if warnings else "Normal", lead.reason, message[:1024])
