"""decide(): the HPA behaviour table, missing/stale metrics, rate limits, bounds, GPU cap, zero.

Section names in comments refer to https://kubernetes.io/docs/concepts/workloads/autoscaling/
horizontal-pod-autoscale/ (and the HPA controller code it describes).
"""
from __future__ import annotations

import pytest

from trtop.api.spec import ScalingSpec
from trtop.autoscale import (
    Observation, PodSample, RatePolicy, Recommendation, ScaleEvent, ScalingHistory, ScalingPolicy, decide,
    policy_from_spec,
)

T0 = 1_000_000.0
NO_WINDOW = dict(scale_down_window_seconds=0.0)


def pods(*values: float | None, ready: bool = True, prefix: str = "p") -> tuple[PodSample, ...]:
    return tuple(PodSample(f"{prefix}{i}", ready, v) for i, v in enumerate(values))


def obs(current: int, samples: tuple[PodSample, ...], at: float = T0, **kw: object) -> Observation:
    return Observation(at=at, current_replicas=current, pods=samples, **kw)  # type: ignore[arg-type]


def policy(**kw: object) -> ScalingPolicy:
    base: dict[str, object] = dict(min_replicas=1, max_replicas=20, target=4.0)
    base.update(kw)
    return ScalingPolicy(**base)  # type: ignore[arg-type]


# (id, policy kwargs, current replicas, pod samples, expected desired) — "Algorithm details".
TABLE = [
    # desiredReplicas = ceil[currentReplicas * (currentMetricValue / desiredMetricValue)]:
    # "if the current metric value is 200m, and the desired value is 100m, the number of
    # replicas will be doubled".
    ("double-at-2x", NO_WINDOW, 2, pods(8, 8), 4),
    # "if the current value is instead 50m, you'll halve the number of replicas".
    ("halve-at-half", NO_WINDOW, 4, pods(2, 2, 2, 2), 2),
    # "The control plane skips any scaling action if the ratio is sufficiently close to 1.0
    # (within a globally-configurable tolerance, 0.1 by default)".
    ("within-tolerance-up", NO_WINDOW, 4, pods(4.4, 4.4, 4.4, 4.4), 4),
    ("within-tolerance-down", NO_WINDOW, 4, pods(3.6, 3.6, 3.6, 3.6), 4),
    ("just-outside-tolerance", NO_WINDOW, 4, pods(4.5, 4.5, 4.5, 4.5), 5),
    ("custom-tolerance-0", dict(tolerance=0.0, **NO_WINDOW), 4, pods(4.4, 4.4, 4.4, 4.4), 5),
    # "the currentMetricValue is computed by taking the average of the given metric across
    # all Pods": uneven pods average out.
    ("average-of-pods", NO_WINDOW, 3, pods(12, 0, 0), 3),
    ("average-of-pods-up", NO_WINDOW, 3, pods(12, 6, 0), 5),
    # "If a particular Pod is missing metrics ... in the case of a scale down, assume those
    # pods were consuming 100% of the desired value; in the case of a scale up, 0%".
    ("missing-on-scale-down-count-as-target", NO_WINDOW, 3, pods(1, 1, None), 2),
    ("missing-on-scale-up-count-as-zero", NO_WINDOW, 3, pods(8, 8, None), 4),
    # "... the control plane also considers whether any metrics are missing, and how many Pods
    # are Ready": not-yet-ready pods count as 0 on scale-up.
    ("unready-zero-on-scale-up", NO_WINDOW, 4, pods(8, 8) + pods(None, None, ready=False, prefix="u"), 4),
    ("unready-dampens-scale-up", NO_WINDOW, 3, pods(12, 12) + pods(None, ready=False, prefix="u"), 6),
    # ... and are set aside (ignored) on scale-down: their own readings never count.
    ("unready-ignored-on-scale-down", NO_WINDOW, 3, pods(1, 1) + pods(50, ready=False, prefix="u"), 1),
    # "If the new ratio reverses the scale direction, or is within the tolerance, the
    # controller doesn't take any scaling action."
    ("missing-reverses-direction", NO_WINDOW, 3, pods(5, None, None), 3),
    ("missing-fill-within-tolerance", NO_WINDOW, 2, pods(8.4, None), 2),
    # Missing pods alone never lower the count (at exactly target they count as target).
    ("at-target-with-missing", NO_WINDOW, 2, pods(4, None), 2),
]


@pytest.mark.parametrize("case", TABLE, ids=[c[0] for c in TABLE])
def test_hpa_algorithm_table(case: tuple[str, dict[str, object], int, tuple[PodSample, ...], int]) -> None:
    _, kw, current, samples, want = case
    d, _ = decide(policy(**kw), obs(current, samples), ScalingHistory())
    assert d.desired_replicas == want, d.reason


def test_decision_reports_the_metric_and_pods_that_caused_it() -> None:
    d, _ = decide(policy(**NO_WINDOW), obs(3, pods(12, 12, None) + pods(None, ready=False, prefix="u")),
                  ScalingHistory())
    assert (d.metric_value, d.metric_pods, d.missing_pods, d.unready_pods) == (12.0, 2, 1, 1)
    assert d.reason.startswith("scale up 3 -> 6: ") and "12 in-flight requests per pod" in d.reason
    assert d.changed and d.direction == "up"


def test_scale_down_waits_for_the_stabilization_window() -> None:
    # "Stabilization window": "the highest recommendation over the window is used".
    p = policy(scale_down_window_seconds=300.0)
    h = ScalingHistory()
    d, h = decide(p, obs(4, pods(4, 4, 4, 4), at=T0), h)
    assert d.desired_replicas == 4
    for t in range(15, 300, 15):
        d, h = decide(p, obs(4, pods(1, 1, 1, 1), at=T0 + t), h)
        assert d.desired_replicas == 4, f"t={t}: {d.reason}"
        assert "stabilization window" in d.reason
    d, h = decide(p, obs(4, pods(1, 1, 1, 1), at=T0 + 300), h)
    assert d.desired_replicas == 1, d.reason


def test_stabilization_takes_the_highest_recent_recommendation_not_the_current_count() -> None:
    p = policy(scale_down_window_seconds=60.0)
    h = ScalingHistory((Recommendation(T0 - 30, 3), Recommendation(T0 - 90, 9)))
    d, _ = decide(p, obs(5, pods(1, 1, 1, 1, 1)), h)
    assert d.desired_replicas == 3, d.reason


def test_a_fresh_history_is_seeded_with_the_current_count_like_hpa() -> None:
    # The HPA seeds a new autoscaler's recommendations with the current replicas, so an
    # operator restart with low load does not scale down before a full window.
    p = policy(scale_down_window_seconds=120.0)
    d, h = decide(p, obs(4, pods(0.5, 0.5, 0.5, 0.5)), ScalingHistory())
    assert d.desired_replicas == 4
    d, _ = decide(p, obs(4, pods(0.5, 0.5, 0.5, 0.5), at=T0 + 121), h)
    assert d.desired_replicas == 1


def test_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    p = policy(scale_up_window_seconds=30.0, **NO_WINDOW)
    h = ScalingHistory()
    d, h = decide(p, obs(2, pods(4, 4), at=T0), h)
    d, h = decide(p, obs(2, pods(12, 12), at=T0 + 10), h)
    assert d.desired_replicas == 2 and "scale-up stabilization window" in d.reason
    d, h = decide(p, obs(2, pods(12, 12), at=T0 + 31), h)
    assert d.desired_replicas == 6


def test_default_scale_up_rate_is_max_of_4_pods_and_100_percent_per_15s() -> None:
    # "Default Behavior": scaleUp policies Pods 4 / 15 s and Percent 100 / 15 s, selectPolicy Max.
    p = policy(max_replicas=100)
    d, h = decide(p, obs(1, pods(80)), ScalingHistory())
    assert (d.desired_replicas, d.limited_by_rate, d.limit_reason) == (5, True, "ScaleUpLimit")
    # Within the same 15 s period the 4 pods already added count against the limit.
    d2, h2 = decide(p, obs(5, pods(80, 80, 80, 80, 80), at=T0 + 5), h)
    assert d2.desired_replicas == 5 and d2.limited_by_rate
    # After the period: 100% of 5 beats 4 pods.
    d3, _ = decide(p, obs(5, pods(80, 80, 80, 80, 80), at=T0 + 16), h2)
    assert d3.desired_replicas == 10


def test_default_scale_down_rate_allows_everything_at_once() -> None:
    # "Default Behavior": scaleDown Percent 100 / 15 s after the 300 s window.
    d, _ = decide(policy(min_replicas=1, **NO_WINDOW), obs(10, pods(*[0.1] * 10)), ScalingHistory())
    assert d.desired_replicas == 1


@pytest.mark.parametrize("current,want", [(80, 72), (20, 16)])
def test_scale_down_policies_pick_the_biggest_change(current: int, want: int) -> None:
    # "Scaling policies" example: Pods 4 / 60 s and Percent 10 / 60 s; with more than 40
    # replicas the percent policy allows the bigger change, below that the pods policy.
    p = policy(max_replicas=100, scale_down_policies=(RatePolicy("pods", 4, 60), RatePolicy("percent", 10, 60)),
               **NO_WINDOW)
    d, _ = decide(p, obs(current, pods(*[0.0] * current)), ScalingHistory())
    assert (d.desired_replicas, d.limit_reason) == (want, "ScaleDownLimit")


def test_select_policy_min_picks_the_smallest_change() -> None:
    p = policy(max_replicas=100, scale_down_select="min",
               scale_down_policies=(RatePolicy("pods", 4, 60), RatePolicy("percent", 10, 60)), **NO_WINDOW)
    d, _ = decide(p, obs(80, pods(*[0.0] * 80)), ScalingHistory())
    assert d.desired_replicas == 76


def test_scale_down_rate_counts_earlier_removals_in_the_period() -> None:
    p = policy(scale_down_policies=(RatePolicy("pods", 2, 60),), **NO_WINDOW)
    h = ScalingHistory(events=(ScaleEvent(T0 - 30, -2),))
    d, _ = decide(p, obs(8, pods(*[0.0] * 8)), h)
    assert d.desired_replicas == 8 and d.limited_by_rate  # 2 already removed within 60 s
    d, _ = decide(p, obs(8, pods(*[0.0] * 8), at=T0 + 31), h)
    assert d.desired_replicas == 6


def test_disabled_scale_down() -> None:
    # "Example: disable scale down": selectPolicy Disabled.
    p = policy(scale_down_select="disabled", **NO_WINDOW)
    d, _ = decide(p, obs(6, pods(*[0.0] * 6)), ScalingHistory())
    assert d.desired_replicas == 6
    d, _ = decide(p, obs(6, pods(*[40.0] * 6)), ScalingHistory())
    assert d.desired_replicas == 12


@pytest.mark.parametrize("current,samples,want,limit", [
    (4, pods(40, 40, 40, 40), 6, "TooManyReplicas"),
    (3, pods(0.1, 0.1, 0.1), 2, "TooFewReplicas"),
])
def test_min_and_max_bound_the_metric(current: int, samples: tuple[PodSample, ...], want: int, limit: str) -> None:
    d, _ = decide(policy(min_replicas=2, max_replicas=6, **NO_WINDOW), obs(current, samples), ScalingHistory())
    assert (d.desired_replicas, d.limit_reason, d.limited_by_rate) == (want, limit, False)


@pytest.mark.parametrize("current,want", [(9, 6), (1, 2), (0, 2)])
def test_counts_outside_min_max_are_clamped_before_metrics(current: int, want: int) -> None:
    # "Algorithm details" (controller): above max -> max, below min -> min, regardless of load.
    d, _ = decide(policy(min_replicas=2, max_replicas=6), obs(current, ()), ScalingHistory())
    assert d.desired_replicas == want
    assert "maxReplicas" in d.reason or "minReplicas" in d.reason


@pytest.mark.parametrize("samples", [
    (), pods(None, None, None), pods(None, None, ready=False), pods(float("nan"), None, None),
], ids=["no-pods", "all-missing", "none-ready", "nan"])
def test_no_usable_metrics_holds(samples: tuple[PodSample, ...]) -> None:
    d, h = decide(policy(**NO_WINDOW), obs(3, samples), ScalingHistory())
    assert (d.desired_replicas, d.held, d.metric_value) == (3, True, None)
    assert "never scale down" in d.reason
    assert h.recommendations[-1] == Recommendation(T0, 3)


def test_stale_metrics_hold_and_never_scale_down() -> None:
    p = policy(max_metric_age_seconds=30.0, **NO_WINDOW)
    stale = tuple(PodSample(f"p{i}", True, 0.0, sampled_at=T0 - 45) for i in range(4))
    d, _ = decide(p, obs(4, stale), ScalingHistory())
    assert d.desired_replicas == 4 and d.held and "older than 30 s" in d.reason
    fresh = tuple(PodSample(f"p{i}", True, 0.0, sampled_at=T0 - 5) for i in range(4))
    d, _ = decide(p, obs(4, fresh), ScalingHistory())
    assert d.desired_replicas == 1


def test_a_stale_pod_counts_as_missing() -> None:
    p = policy(max_metric_age_seconds=30.0, **NO_WINDOW)
    samples = (PodSample("a", True, 1.0, T0), PodSample("b", True, 1.0, T0), PodSample("c", True, 0.0, T0 - 300))
    d, _ = decide(p, obs(3, samples), ScalingHistory())
    assert (d.desired_replicas, d.missing_pods) == (2, 1)  # as in the missing-on-scale-down row


def test_an_outage_restarts_the_scale_down_window() -> None:
    # trtop's deliberate difference: a hold records the current count, so readings that come
    # back low after an outage still wait a full window.
    p = policy(scale_down_window_seconds=60.0)
    h = ScalingHistory((Recommendation(T0 - 120, 4),))
    _, h = decide(p, obs(4, pods(None, None, None, None), at=T0), h)
    d, _ = decide(p, obs(4, pods(1, 1, 1, 1), at=T0 + 30), h)
    assert d.desired_replicas == 4


def test_gpu_capacity_caps_scale_up_and_says_by_how_much() -> None:
    d, _ = decide(policy(**NO_WINDOW), obs(4, pods(16, 16, 16, 16), schedulable_capacity=5), ScalingHistory())
    assert (d.desired_replicas, d.capped, d.capped_by, d.limit_reason) == (5, True, 3, "GPUCapacity")
    assert d.capacity_message == ("wanted 8 replicas but the cluster's GPUs on architectures with a ready engine "
                                  "can host only 5: asking for 5, capped by 3")
    assert "can host only 5" in d.reason


def test_gpu_capacity_below_current_never_scales_down() -> None:
    d, _ = decide(policy(**NO_WINDOW), obs(4, pods(8, 8, 8, 8), schedulable_capacity=3), ScalingHistory())
    assert (d.desired_replicas, d.capped_by) == (4, 4)
    assert "wanted 8 replicas" in d.capacity_message and "can host only 3: asking for 4" in d.capacity_message
    d, _ = decide(policy(**NO_WINDOW), obs(4, pods(4, 4, 4, 4), schedulable_capacity=3), ScalingHistory())
    assert (d.desired_replicas, d.capped, d.capacity_message) == (4, False, "")


def test_gpu_capacity_applies_to_the_min_replicas_floor() -> None:
    d, _ = decide(policy(min_replicas=3), obs(0, (), schedulable_capacity=1), ScalingHistory())
    assert (d.desired_replicas, d.capped_by) == (1, 2)


def test_scale_to_zero_after_a_window_of_zero_load_then_back_on_pending_load() -> None:
    p = policy(min_replicas=0, scale_down_window_seconds=60.0)
    h = ScalingHistory()
    d, h = decide(p, obs(2, pods(0, 0.5), at=T0), h)
    d, h = decide(p, obs(2, pods(0, 0.5), at=T0 + 61), h)
    assert d.desired_replicas == 1  # a little load keeps one replica
    for t in (75, 90, 120):
        d, h = decide(p, obs(1, pods(0), at=T0 + t), h)
        assert d.desired_replicas == 1, d.reason  # the 0.5-load recommendation is still in the window
    d, h = decide(p, obs(1, pods(0), at=T0 + 122), h)
    assert d.desired_replicas == 0
    d, h = decide(p, obs(0, (), at=T0 + 130), h)
    assert (d.desired_replicas, d.held) == (0, False)
    d, h = decide(p, obs(0, (), at=T0 + 140, pending_load=9.0), h)
    assert d.desired_replicas == 3 and "waiting while scaled to zero" in d.reason
    d, _ = decide(p, obs(0, (), at=T0 + 140, pending_load=0.5, schedulable_capacity=0), ScalingHistory())
    assert (d.desired_replicas, d.capped_by) == (0, 1)


def test_scale_from_zero_is_rate_limited() -> None:
    d, _ = decide(policy(min_replicas=0), obs(0, (), pending_load=400.0), ScalingHistory())
    assert (d.desired_replicas, d.limit_reason) == (4, "ScaleUpLimit")


def test_history_is_pruned_and_round_trips_through_json() -> None:
    p = policy(scale_down_window_seconds=60.0)
    h = ScalingHistory()
    for t in range(0, 600, 15):
        _, h = decide(p, obs(3, pods(4, 4, 4), at=T0 + t), h)
    assert all(r.at > T0 + 585 - 60 for r in h.recommendations)
    assert ScalingHistory.from_dict(h.to_dict()) == h
    assert ScalingHistory.from_dict({"recommendations": [["x", 1]]}) == ScalingHistory()
    assert ScalingHistory.from_dict(None) == ScalingHistory()


def test_policy_from_spec_keeps_the_spec_and_hpa_defaults() -> None:
    spec = ScalingSpec(min_replicas=0, max_replicas=8, metric="rps", target=20.0,
                       scale_up_window_seconds=5, scale_down_window_seconds=60)
    p = policy_from_spec(spec)
    assert (p.min_replicas, p.max_replicas, p.metric, p.target) == (0, 8, "rps", 20.0)
    assert (p.scale_up_window_seconds, p.scale_down_window_seconds, p.tolerance) == (5.0, 60.0, 0.1)
    assert p.scale_up_policies == (RatePolicy("pods", 4, 15.0), RatePolicy("percent", 100, 15.0))


@pytest.mark.parametrize("kw,message", [
    (dict(min_replicas=5, max_replicas=2), "maxReplicas"),
    (dict(target=0.0), "target"),
    (dict(tolerance=1.5), "tolerance"),
    (dict(scale_up_policies=()), "at least one rate policy"),
])
def test_invalid_policies_say_what_to_fix(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy(**kw)


def test_readings_of_1e308_do_not_overflow():
    decision, _ = decide(policy(max_replicas=5), obs(2, pods(1e308, 1e308)), ScalingHistory())
    assert decision.desired_replicas == 5
    decision, _ = decide(policy(min_replicas=0, max_replicas=5), obs(0, (), pending_load=1e308), ScalingHistory())
    assert decision.desired_replicas >= 1
