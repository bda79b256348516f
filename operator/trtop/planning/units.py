"""Serving units of one ModelDeployment: which exist, how many pods each, which go (pure).

Called by ``trtop.planning.plan``. A unit is one Deployment per architecture with a
servable engine (``trtop.planning.serving.build_unit``). Live units fall in three kinds:
- **serving**: its architecture has a servable engine; applied with the split's replicas;
- **held**: its architecture is still a target but its engine is not servable now (a
  rebuild, a failed build): left exactly as it is, its capacity counted;
- **leaving**: its architecture is no longer a target (no schedulable node past the grace
  period, or the spec stopped asking for it): left as it is until the serving units' ready
  capacity carries what is asked for, then deleted. The single Deployment trtop made
  before units (named like the ModelDeployment) leaves the same way.
Ready capacity counts only pods made from a unit's current template (``template-hash``),
so a unit rolling to a new model revision counts once its new pods are ready.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trtop import names
from trtop.api.spec import ModelDeploymentSpec
from trtop.api.targets import Target, gpu_target_of_node
from trtop.config import Settings
from trtop.planning.capacity import (
    Slot, bounded_speed, capacity_ceiling, engine_throughput, preference_rank, split_replicas,
)
from trtop.planning.common import Manifest, applied_hash, with_applied_hash
from trtop.planning.engines import EngineStatus
from trtop.planning.facts import DeploymentFact, NodeFact, PodFact
from trtop.planning.serving import build_unit, model_revision, unit_name
from trtop.planning.targets import nodes_for_target

EPSILON = 1e-6


@dataclass(frozen=True)
class Serving:
    """What the units plan asks for and what is serving now, in capacity units and pods."""

    manifests: tuple[Manifest, ...] = ()  # every serving unit, applied-hash annotated
    to_apply: tuple[Manifest, ...] = ()  # of those, the ones that differ from the live unit
    to_delete: tuple[DeploymentFact, ...] = ()  # leaving units (and the old single Deployment) whose load is carried
    units: tuple[dict[str, Any], ...] = ()  # status.units[]
    capacity_unit: dict[str, Any] = field(default_factory=dict)  # status.capacityUnit
    desired: float = 0.0  # capacity units asked for
    ready: float = 0.0  # capacity units of ready pods serving the current spec
    live: float = 0.0  # capacity units of the live units' replicas (status.replicas)
    exists: bool = False  # any unit (or the old Deployment) is live
    short: float = 0.0  # capacity units placed on pods no free GPU can host yet
    rollout_pending: str = ""  # why serving does not match the plan yet ("" when it does)
    ceiling: float | None = None  # capacity units the live pods plus free GPUs could carry
    refused: str = ""  # units whose pods the API server refused to create, and why ("" when none)

    @property
    def capacity_met(self) -> bool:
        return self.ready >= self.desired - EPSILON if self.desired > 0 else True


def gpus_per_pod(target: Target) -> int:
    """One GPU per serving pod on a GPU target: what its manifest asks (``serving.build_unit``; the spec may say no
    other number, ``validation.check_gpus``)."""
    return 0 if target.is_cpu else 1


def free_pods(spec: ModelDeploymentSpec, target: Target, nodes: Sequence[NodeFact]) -> int | None:
    """Pods more the free GPUs of ``target``'s schedulable nodes can host (None: no GPU needed)."""
    per = gpus_per_pod(target)
    if per == 0:
        return None
    return sum(max(0, n.gpu_allocatable - n.gpu_requested) // per for n in nodes_for_target(target, nodes))


def capacity_unit(engines: Sequence[EngineStatus], revision: str, previous: Mapping[str, Any]) -> tuple[
        dict[Target, float], dict[str, Any]]:
    """(capacity units per pod of each engine's unit, status.capacityUnit).

    The reference is kept while the model revision stays (an architecture joining never
    changes what a replica means); else the fastest engine's throughput. Equal weights,
    said so, when an engine has no benchmark throughput.
    """
    throughputs = {e.target: engine_throughput(e.record) for e in engines}
    if not engines or any(t is None for t in throughputs.values()):
        missing = sorted(str(t) for t, v in throughputs.items() if v is None)
        return {e.target: 1.0 for e in engines}, {
            "basis": "equal", "modelRevision": revision,
            "message": ("every unit's pod counts as one replica: no benchmark throughput in the engine record of "
                        + ", ".join(missing)) if missing else "no engine is served"}
    ref, ref_target = _kept_reference(previous, revision)
    if ref is None:
        ref_target, ref = max(((str(t), v) for t, v in throughputs.items() if v is not None), key=lambda x: (x[1], x[0]))
    speeds = {t: bounded_speed((v or ref) / ref) for t, v in throughputs.items()}
    return speeds, {"basis": "benchmark", "modelRevision": revision, "target": ref_target,
                    "throughput": round(ref, 3),
                    "message": f"one replica = {ref:g} samples/s, the benchmark of the {ref_target} engine"}


def _kept_reference(previous: Mapping[str, Any], revision: str) -> tuple[float | None, str]:
    unit = previous.get("capacityUnit")
    if not isinstance(unit, Mapping) or unit.get("basis") != "benchmark" or unit.get("modelRevision") != revision:
        return None, ""
    value = unit.get("throughput")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None, ""
    return float(value), str(unit.get("target") or "")


def _products(target: Target, nodes: Sequence[NodeFact]) -> list[str]:
    found = {gpu_target_of_node(n.labels, with_product=True) for n in nodes_for_target(target, nodes)}
    return sorted(t.product for t in found if t is not None and t.product)


def plan_units(
    md: Mapping[str, Any], spec: ModelDeploymentSpec, settings: Settings, *, serve: Sequence[EngineStatus],
    targets: Sequence[Target], units: Sequence[DeploymentFact], legacy: DeploymentFact | None,
    pods: Sequence[PodFact], nodes: Sequence[NodeFact], desired: float, previous: Mapping[str, Any], hold: bool,
    full: frozenset[str] = frozenset(), admission_state: str = "",
) -> Serving:
    """The units to apply and delete, and what serves now. ``hold``: change nothing (status only).
    ``full``: architectures (unit labels) the scheduler lately found no room on, whatever the free GPUs counted.
    ``admission_state``: the namespace's quota and LimitRange limits (``ClusterFacts.admission_state``), marked on a
    refused unit."""
    md_name = str(md["metadata"]["name"])
    revision = model_revision(spec)
    speeds, unit = capacity_unit(serve, revision, previous)
    live = {u.name: u for u in units if not u.foreign}
    serving_names = {unit_name(md_name, e.target): e for e in serve}
    target_names = {unit_name(md_name, t) for t in targets}
    held = [u for n, u in sorted(live.items()) if n not in serving_names and n in target_names]
    leaving = [u for n, u in sorted(live.items()) if n not in serving_names and n not in target_names]

    def ready_pods(slug: str, template: str | None) -> int:
        return sum(1 for p in pods if p.ready and p.target == slug and (template is None or p.template_hash == template))

    if hold:
        return _as_they_are(live, legacy, pods, unit, desired)
    held_cap = sum(u.replicas for u in held)

    def placed(name: str, target: Target) -> int:
        """The unit's replicas, less pods no node can take (their capacity is placed again: a
        unit that lost a race for the last GPUs gives them to an architecture with room)."""
        stuck = sum(1 for p in pods if p.target == target.slug and p.unschedulable)
        return max(0, live[name].replicas - stuck) if name in live else 0

    def room(target: Target) -> int | None:
        """Pods more its free GPUs can host. The count is an upper bound (GPU pods the operator does not watch hold
        GPUs too: another namespace's, for a namespaced operator), so where the scheduler found no node for a
        serving pod of it, lately or now, there is none: capacity goes to an architecture with room, not back to
        one whose pods stay Pending for good."""
        if target.slug in full or any(p.target == target.slug and p.unschedulable for p in pods):
            return 0
        return free_pods(spec, target, nodes)

    slots = [Slot(e.target, speeds[e.target], placed(n, e.target), room(e.target),
                  preference_rank(e.target, settings.placement_preference, _products(e.target, nodes))
                  if settings.placement_preference else 0)
             for n, e in sorted(serving_names.items())]
    split = split_replicas(max(0.0, desired - held_cap), slots)
    manifests: list[Manifest] = []
    entries: list[dict[str, Any]] = []
    caps: list[float] = []  # capacity units of each entry (unrounded)
    ready = 0.0
    pending: list[str] = []
    for (name, engine), slot in zip(sorted(serving_names.items()), slots):
        replicas = split.replicas.get(engine.target, 0)
        manifest = build_unit(md, spec, engine, replicas, settings)
        template = str(manifest["metadata"]["annotations"][names.ANNOTATION_TEMPLATE_HASH])
        current = ready_pods(engine.target.slug, template)
        ready += current * slot.speed
        stale = sum(1 for p in pods if p.target == engine.target.slug and p.template_hash != template)
        in_place = _in_place(spec, live.get(name), replicas, stale, room=slot.room, stuck_new=any(
            p.unschedulable and p.target == engine.target.slug and p.template_hash == template for p in pods))
        if in_place:
            manifest["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = 1
            manifest["metadata"]["annotations"][names.ANNOTATION_ROLLOUT_IN_PLACE] = "true"
        retry = _quota_retry(live.get(name), admission_state)
        if retry:
            manifest["metadata"]["annotations"][names.ANNOTATION_QUOTA_RETRY] = retry
        manifest = with_applied_hash(manifest)
        manifests.append(manifest)
        if current < replicas or stale:
            refused = " (the API server refuses the rest: see ScalingLimited)" if (
                name in live and live[name].refused) else ""
            how = (", replaced one pod fewer at a time: no GPU of its type is free for a new pod beside the old ones"
                   " (rollout.whenFull)") if in_place else ""
            pending.append(f"unit {name}: {current}/{replicas} pods ready on the current template{refused}{how}")
        caps.append(replicas * slot.speed)
        entries.append({"name": name, "target": str(engine.target), "engine": engine.key, "state": "Serving",
                        "replicas": replicas, "readyReplicas": current, "capacityPerReplica": round(slot.speed, 3),
                        "throughput": engine_throughput(engine.record)} | ({"rollout": "InPlace"} if in_place else {}))
    units_ready = ready  # what the units that stay carry (held ones included below)
    for u in held + leaving:
        count = ready_pods(u.target, None) if u.model_revision == revision else 0
        ready += count  # a held or leaving unit's pods count one replica each
        units_ready += count if u in held else 0
        caps.append(float(u.replicas))
        entries.append({"name": u.name, "target": u.target, "engine": ",".join(u.engine_keys),
                        "state": "Held" if u in held else "Leaving", "replicas": u.replicas, "readyReplicas": count,
                        "capacityPerReplica": 1.0, "throughput": None})
    if legacy is not None and not legacy.foreign and legacy.model_revision == revision:
        ready += legacy.ready_replicas
    live_cap = sum(caps) + (legacy.replicas if legacy else 0)
    for e, cap in zip(entries, caps):
        e["share"] = f"{round(100 * cap / (sum(caps) or 1.0))}%"
        if e["throughput"] is None:
            del e["throughput"]
    carried = units_ready >= desired - EPSILON
    going = [u for u in leaving if carried or u.replicas == 0]
    if legacy is not None and not legacy.foreign and carried:
        going.append(legacy)
    waiting = [u.name for u in leaving if u not in going] + (
        [legacy.name] if legacy is not None and not legacy.foreign and legacy not in going else [])
    if waiting:
        pending.append(f"keeping {', '.join(waiting)} until the serving units carry "
                       f"{desired:g} replica(s) ({units_ready:g} ready)")
    to_apply = tuple(m for m in manifests if (fact := live.get(m["metadata"]["name"])) is None
                     or fact.applied_hash != applied_hash(m))
    refused = "; ".join(f"{u.name}: {u.refused}" for _, u in sorted(live.items()) if u.refused)
    return Serving(tuple(manifests), to_apply, tuple(going), tuple(entries), unit, desired, ready, live_cap,
                   bool(live) or legacy is not None or bool(manifests), split.short,
                   "; ".join(pending), capacity_ceiling(slots), refused)


def _quota_retry(live: DeploymentFact | None, admission_state: str) -> str:
    """The unit's ANNOTATION_QUOTA_RETRY: while the API server refuses its pods, the namespace's quota and LimitRange
    limits now, so a raised limit changes the Deployment (and, through the Deployment controller, its ReplicaSet,
    which then tries again at once); otherwise the mark it has (nothing to write when a refusal ends or for other
    refusals)."""
    if live is None:
        return ""
    return admission_state if live.refused and admission_state else live.quota_retry


def _in_place(spec: ModelDeploymentSpec, fact: DeploymentFact | None, replicas: int, stale: int, *,
              room: int | None, stuck_new: bool) -> bool:
    """Whether a unit rolls one pod fewer at a time (maxUnavailable 1; ``rollout.whenFull`` ReplaceInPlace).

    A rollout that may take no old pod down first needs a GPU free for each new pod beside them; on a full
    architecture the new pod waits Pending for ever and the old revision serves on (users' "blue/green needs twice
    the GPUs and stalls when the cluster is full"). So: while pods of the old template remain, once a new pod
    finds no node and the architecture has no free GPU, or since an earlier plan said so (the unit's annotation: a
    new pod scheduled on the GPU an old one freed must not turn it off and on again). Only where the spec's
    maxUnavailable leaves no old pod to take down (0, or a percent of these replicas that rounds to 0)."""
    if spec.rollout.when_full != "ReplaceInPlace" or stale == 0 or room is None:
        return False
    bound = spec.rollout.max_unavailable
    unavailable = int(bound[:-1]) * replicas // 100 if bound.endswith("%") else int(bound)
    if unavailable > 0:
        return False
    return (fact is not None and fact.in_place) or (stuck_new and room == 0)


def _as_they_are(live: Mapping[str, DeploymentFact], legacy: DeploymentFact | None, pods: Sequence[PodFact],
                 unit: dict[str, Any], desired: float) -> Serving:
    """Serving while nothing may change (a model update still building, the store unreadable)."""
    counts = [(u, sum(1 for p in pods if p.ready and p.target == u.target)) for _, u in sorted(live.items())]
    entries = tuple({"name": u.name, "target": u.target, "engine": ",".join(u.engine_keys), "state": "Held",
                     "replicas": u.replicas, "readyReplicas": n, "capacityPerReplica": 1.0} for u, n in counts)
    ready = sum(n for _, n in counts) + (legacy.ready_replicas if legacy and not legacy.foreign else 0)
    replicas = sum(u.replicas for u, _ in counts) + (legacy.replicas if legacy and not legacy.foreign else 0)
    return Serving(units=entries, capacity_unit=unit, desired=desired, ready=ready, live=replicas,
                   exists=bool(live) or (legacy is not None and not legacy.foreign))
