"""How many replicas a ModelDeployment should run: the HPA algorithm as one pure function.

``decide(policy, observation, history) -> (Decision, history)`` is called by the operator's
autoscale timer after ``trtop.autoscale.load`` has read the pods' load. It follows the
Kubernetes HorizontalPodAutoscaler (docs "Algorithm details", "Stabilization window",
"Scaling policies", "Default Behavior"; code pkg/controller/podautoscaler) step by step:

1. current replicas outside [min, max] -> clamp, nothing else (HPA does the same);
2. per-pod metrics -> a raw recommendation ceil(sum / target) with tolerance, where pods
   missing metrics count as 0 on scale-up and as ``target`` on scale-down, and not-ready
   pods count as 0 on scale-up and are ignored on scale-down; neither may flip direction;
3. stabilization: scale up to the lowest and down to the highest recommendation made
   within the up/down windows;
4. rate policies (pods or percent per period, select max/min/disabled) and [min, max];
5. trtop's own step: never ask for more replicas than the GPUs can host (``capacity``).

Where trtop differs from the HPA, on purpose: no usable metrics records the current count as
the recommendation (a metrics outage never shortens the scale-down window); ``current == 0``
with ``min == 0`` scales from zero on ``pending_load`` instead of disabling autoscaling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from trtop.autoscale.history import ScalingHistory
from trtop.autoscale.policy import RatePolicy, ScalingPolicy, SelectPolicy

# ceil() of a float quotient: a tiny epsilon keeps 6/5*5 = 6.000000000000001 from becoming 7.
_EPSILON = 1e-9

_UNITS = {"inflight": "in-flight requests", "rps": "requests/s", "queue-time": "ms queue time"}


@dataclass(frozen=True)
class PodSample:
    """One serving pod's load reading (``value`` None: no reading could be had)."""

    name: str
    ready: bool
    value: float | None
    sampled_at: float | None = None  # None: taken at the observation's time


@dataclass(frozen=True)
class Observation:
    at: float
    # The scale target's replicas (Deployment spec.replicas), what the last decision asked for.
    current_replicas: int
    pods: tuple[PodSample, ...] = ()
    # Replicas the cluster can host on architectures with a ready engine: allocatable
    # nvidia.com/gpu minus requested, plus the replicas already running. None: no cap.
    schedulable_capacity: int | None = None
    # Load waiting while no replica serves (metric units; e.g. queued requests seen by a
    # gateway). Only read when current_replicas == 0: any value > 0 scales from zero.
    pending_load: float = 0.0


@dataclass(frozen=True)
class Decision:
    desired_replicas: int
    current_replicas: int
    reason: str  # one sentence a person can read; goes into the Event and status
    metric_value: float | None  # mean over ready pods with fresh readings (before missing/unready fill-in)
    recommendation: int | None  # the raw, unstabilized recommendation from the metric
    capped_by: int = 0  # replicas wanted but withheld because the GPUs cannot host them
    limited_by_rate: bool = False
    # HPA-style reason when a bound applied: ScaleUpLimit, ScaleDownLimit, TooManyReplicas,
    # TooFewReplicas, GPUCapacity, or "".
    limit_reason: str = ""
    held: bool = False  # no usable metrics: the count was held, never lowered
    metric_pods: int = 0
    missing_pods: int = 0
    unready_pods: int = 0
    schedulable_capacity: int | None = None  # the observation's, echoed for messages

    @property
    def changed(self) -> bool:
        return self.desired_replicas != self.current_replicas

    @property
    def direction(self) -> str:
        if self.desired_replicas > self.current_replicas:
            return "up"
        return "down" if self.desired_replicas < self.current_replicas else ""

    @property
    def capped(self) -> bool:
        return self.capped_by > 0

    @property
    def capacity_message(self) -> str:
        """Message for the ScalingLimited condition and its Event; "" when not capped."""
        if not self.capped:
            return ""
        wanted = self.desired_replicas + self.capped_by
        return (f"wanted {wanted} replicas but the cluster's GPUs on architectures with a ready engine "
                f"can host only {self.schedulable_capacity}: asking for {self.desired_replicas}, "
                f"capped by {self.capped_by}")


def decide(policy: ScalingPolicy, observation: Observation,
           history: ScalingHistory) -> tuple[Decision, ScalingHistory]:
    """The replica count to ask for now, and the history to pass to the next call."""
    obs, cur = observation, observation.current_replicas
    history = _seeded(policy, obs, history)
    if cur > policy.max_replicas or cur < policy.min_replicas:
        # HPA "Algorithm details": out-of-range counts are clamped before metrics are read.
        bound = policy.max_replicas if cur > policy.max_replicas else policy.min_replicas
        side = "above maxReplicas" if cur > policy.max_replicas else "below minReplicas"
        decision = Decision(bound, cur, f"current replicas ({cur}) {side} ({bound})", None, None)
        return _finish(policy, obs, history, decision, bound)
    if cur == 0:
        return _from_zero(policy, obs, history)
    raw = _recommend(policy, obs)
    if raw.held:
        held = Decision(cur, cur, raw.reason, None, None, held=True, missing_pods=raw.missing_pods,
                        unready_pods=raw.unready_pods)
        return _finish(policy, obs, history, held, cur)
    stabilized, window_note = _stabilize(policy, obs.at, cur, raw.recommendation, history)
    desired, limit = _limit_rate(policy, obs.at, cur, stabilized, history)
    reason = raw.reason + window_note + _limit_note(policy, limit, stabilized, desired)
    decision = Decision(desired, cur, reason, raw.metric_value, raw.recommendation,
                        limited_by_rate=limit in ("ScaleUpLimit", "ScaleDownLimit"), limit_reason=limit,
                        metric_pods=raw.metric_pods, missing_pods=raw.missing_pods, unready_pods=raw.unready_pods)
    return _finish(policy, obs, history, decision, raw.recommendation)


def _seeded(policy: ScalingPolicy, obs: Observation, history: ScalingHistory) -> ScalingHistory:
    """HPA seeds a new autoscaler's recommendations with the current count, so a fresh start
    (or an operator restart without stored history) never scales down before a full window."""
    if history.recommendations:
        return history
    keep = max(policy.scale_up_window_seconds, policy.scale_down_window_seconds)
    return history.recorded(obs.at, obs.current_replicas, 0, keep, policy.longest_period_seconds)


def _from_zero(policy: ScalingPolicy, obs: Observation, history: ScalingHistory) -> tuple[Decision, ScalingHistory]:
    if obs.pending_load <= 0:
        decision = Decision(0, 0, "scaled to zero and no load is waiting", 0.0, 0)
        return _finish(policy, obs, history, decision, 0)
    raw = max(1, _replicas_for(clamp_metric(obs.pending_load), policy.target))
    desired, limit = _limit_rate(policy, obs.at, 0, raw, history)
    reason = (f"{obs.pending_load:g} {_UNITS[policy.metric]} waiting while scaled to zero vs target "
              f"{policy.target:g} per replica" + _limit_note(policy, limit, raw, desired))
    decision = Decision(desired, 0, reason, obs.pending_load, raw,
                        limited_by_rate=limit in ("ScaleUpLimit", "ScaleDownLimit"), limit_reason=limit)
    return _finish(policy, obs, history, decision, raw)


# A pod's reading is what a tenant's process says: bounded so that sums stay finite
# (two pods reporting 1e308 must not overflow ceil()); far above any real load.
METRIC_CEILING = 1e9


# Kubernetes' replicas are int32: no recommendation needs to be larger, and a load over a tiny
# target (1e9 / 1e-300 = inf) must not reach ceil() as infinity (OverflowError).
_MAX_RECOMMENDATION = 2**31 - 1


def _replicas_for(load: float, target: float) -> int:
    """ceil(load / target), at most _MAX_RECOMMENDATION (rate limits and maxReplicas follow)."""
    return math.ceil(min(load / target, _MAX_RECOMMENDATION) - _EPSILON)


def clamp_metric(value: float) -> float:
    """A reading within [0, METRIC_CEILING] (NaN counts as 0; callers drop None/NaN first)."""
    v = float(value)
    return 0.0 if not v > 0 else min(v, METRIC_CEILING)


@dataclass(frozen=True)
class _Reading:
    """What the replica calculator makes of the pods' metrics."""

    recommendation: int
    metric_value: float | None
    reason: str
    held: bool
    metric_pods: int
    missing_pods: int
    unready_pods: int


def _recommend(policy: ScalingPolicy, obs: Observation) -> _Reading:
    """HPA's replica calculator (calcPlainMetricReplicas) over per-pod values."""
    cur, target = obs.current_replicas, policy.target

    def fresh(p: PodSample) -> bool:
        age = obs.at - (obs.at if p.sampled_at is None else p.sampled_at)
        # abs(): a reading stamped far ahead (a skewed or lying clock) would otherwise never age.
        return p.value is not None and math.isfinite(p.value) and abs(age) <= policy.max_metric_age_seconds

    values = [clamp_metric(p.value) for p in obs.pods if p.ready and fresh(p) and p.value is not None]
    missing = sum(1 for p in obs.pods if p.ready and not fresh(p))
    unready = sum(1 for p in obs.pods if not p.ready)

    def reading(rec: int, usage: float | None, reason: str, held: bool = False) -> _Reading:
        return _Reading(rec, usage, reason, held, len(values), missing, unready)

    if not values:
        why = "no pods listed" if not obs.pods else (
            f"{missing} ready pod(s) without a fresh reading (older than {policy.max_metric_age_seconds:g} s "
            f"or unreadable), {unready} not ready")
        return reading(cur, None, f"no usable load metrics ({why}); missing metrics never scale down",
                       held=True)
    usage = sum(values) / len(values)
    ratio = usage / target
    seen = f"{usage:.3g} {_UNITS[policy.metric]} per pod over {len(values)} ready pod(s) vs target {target:g}"
    scale_up_with_unready = unready > 0 and ratio > 1.0
    if not scale_up_with_unready and missing == 0:
        if _within(ratio, policy.tolerance):
            return reading(cur, usage, f"{seen}: within tolerance {policy.tolerance:g}")
        return reading(_replicas_for(sum(values), target), usage, seen)
    # HPA: on scale-down, pods missing metrics use exactly the target; on scale-up, 0.
    # ratio == 1.0 takes the scale-down side so missing pods alone can never lower the count.
    filled = values + [target if ratio <= 1.0 else 0.0] * missing
    if scale_up_with_unready:
        filled += [0.0] * unready
    new_ratio = sum(filled) / len(filled) / target
    seen += f" ({missing} missing and {unready if scale_up_with_unready else 0} not-ready pod(s) filled in)"
    if _within(new_ratio, policy.tolerance) or (ratio < 1.0 < new_ratio) or (new_ratio < 1.0 < ratio):
        return reading(cur, usage, f"{seen}: no change once missing/not-ready pods are counted")
    raw = _replicas_for(sum(filled), target)
    if (new_ratio < 1.0 and raw > cur) or (new_ratio > 1.0 and raw < cur):
        return reading(cur, usage, f"{seen}: the pod count would flip the direction, no change")
    return reading(raw, usage, seen)


def _within(ratio: float, tolerance: float) -> bool:
    return abs(1.0 - ratio) <= tolerance + _EPSILON


def _stabilize(policy: ScalingPolicy, now: float, cur: int, raw: int,
               history: ScalingHistory) -> tuple[int, str]:
    """HPA stabilizeRecommendationWithBehaviors: up to the lowest recommendation in the up
    window, down to the highest in the down window; never past the current count otherwise."""
    up = min([raw, *history.recommended_since(now - policy.scale_up_window_seconds)])
    down = max([raw, *history.recommended_since(now - policy.scale_down_window_seconds)])
    stabilized = min(max(cur, up), down)
    if stabilized == raw:
        return stabilized, ""
    if raw < cur:
        return stabilized, (f"; scale-down to {raw} held at {stabilized} by the "
                            f"{policy.scale_down_window_seconds:g} s stabilization window")
    return stabilized, (f"; scale-up to {raw} held at {stabilized} by the "
                        f"{policy.scale_up_window_seconds:g} s scale-up stabilization window")


def _limit_rate(policy: ScalingPolicy, now: float, cur: int, desired: int,
                history: ScalingHistory) -> tuple[int, str]:
    """HPA convertDesiredReplicasWithBehaviorRate: rate policies, then [min, max]."""
    if desired > cur:
        up_limit = max(cur, _scale_up_limit(cur, now, history, policy.scale_up_policies, policy.scale_up_select))
        if policy.max_replicas > up_limit:
            ceiling, why = up_limit, "ScaleUpLimit"
        else:
            ceiling, why = policy.max_replicas, "TooManyReplicas"
        return (ceiling, why) if desired > ceiling else (desired, "")
    if desired < cur:
        down_limit = min(cur, _scale_down_limit(cur, now, history, policy.scale_down_policies,
                                                policy.scale_down_select))
        if policy.min_replicas < down_limit:
            floor, why = down_limit, "ScaleDownLimit"
        else:
            floor, why = policy.min_replicas, "TooFewReplicas"
        return (floor, why) if desired < floor else (desired, "")
    return desired, ""


def _period_start(cur: int, now: float, history: ScalingHistory, rule: RatePolicy) -> int:
    cutoff = now - rule.period_seconds
    return cur - history.added_since(cutoff) + history.removed_since(cutoff)


def _scale_up_limit(cur: int, now: float, history: ScalingHistory,
                    rules: tuple[RatePolicy, ...], select: SelectPolicy) -> int:
    if select == "disabled":
        return cur
    proposals = []
    for rule in rules:
        start = _period_start(cur, now, history, rule)
        if rule.kind == "pods":
            proposals.append(start + rule.value)
        else:  # rounded up, or a small count could never grow (HPA does the same)
            proposals.append(math.ceil(start * (1 + rule.value / 100) - _EPSILON))
    return max(proposals) if select == "max" else min(proposals)


def _scale_down_limit(cur: int, now: float, history: ScalingHistory,
                      rules: tuple[RatePolicy, ...], select: SelectPolicy) -> int:
    if select == "disabled":
        return cur
    proposals = []
    for rule in rules:
        start = _period_start(cur, now, history, rule)
        if rule.kind == "pods":
            proposals.append(start - rule.value)
        else:
            proposals.append(int(start * (1 - rule.value / 100) + _EPSILON))
    # "max" = the biggest change = the lowest floor.
    return min(proposals) if select == "max" else max(proposals)


def _limit_note(policy: ScalingPolicy, limit: str, wanted: int, got: int) -> str:
    if limit == "ScaleUpLimit":
        return f"; scale-up to {wanted} limited to {got} by the rate policy ({_rules(policy.scale_up_policies)})"
    if limit == "ScaleDownLimit":
        return f"; scale-down to {wanted} limited to {got} by the rate policy ({_rules(policy.scale_down_policies)})"
    if limit == "TooManyReplicas":
        return f"; {wanted} wanted, capped at maxReplicas {got}"
    if limit == "TooFewReplicas":
        return f"; {wanted} wanted, kept at minReplicas {got}"
    return ""


def _rules(rules: tuple[RatePolicy, ...]) -> str:
    return ", ".join(f"{r.value}{' pods' if r.kind == 'pods' else '%'} per {r.period_seconds:g} s" for r in rules)


def _finish(policy: ScalingPolicy, obs: Observation, history: ScalingHistory, decision: Decision,
            recommendation: int) -> tuple[Decision, ScalingHistory]:
    """Apply the GPU capacity cap, prefix the verdict, and record the decision."""
    cur, desired = obs.current_replicas, decision.desired_replicas
    capped_by, limit = 0, decision.limit_reason
    cap = obs.schedulable_capacity
    # The cap only ever withholds growth: GPUs may come back, and lowering a running count
    # because capacity shrank is the scheduler's business, not the autoscaler's.
    if cap is not None and desired > cur and desired > cap:
        capped = max(cur, cap)
        capped_by, desired, limit = desired - capped, capped, "GPUCapacity"
    if desired > cur:
        verdict = f"scale up {cur} -> {desired}"
    elif desired < cur:
        verdict = f"scale down {cur} -> {desired}"
    else:
        verdict = f"hold at {cur}"
    reason = f"{verdict}: {decision.reason}"
    if capped_by:
        reason += (f"; capped by {capped_by} because the cluster's GPUs with a ready engine can host "
                   f"only {cap} replica(s)")
    keep = max(policy.scale_up_window_seconds, policy.scale_down_window_seconds)
    # Recorded within [min, max]: every decision ends there anyway, and it bounds the history's
    # distinct counts (ScalingHistory keeps at most two per count).
    remembered = min(max(recommendation, policy.min_replicas), policy.max_replicas)
    new_history = history.recorded(obs.at, remembered, desired - cur, keep, policy.longest_period_seconds)
    final = replace(decision, desired_replicas=desired, reason=reason, capped_by=capped_by, limit_reason=limit,
                    schedulable_capacity=cap)
    return final, new_history
