"""How a ModelDeployment wants to be scaled: the inputs of ``decide`` that come from its spec.

Plain frozen data with the HPA's defaults (autoscaling/v2 ``behavior``): scale up by at most
max(4 pods, 100%) per 15 s with no stabilization, scale down by at most 100% per 15 s after a
300 s stabilization window, tolerance 0.1. ``policy_from_spec`` maps ``spec.scaling``; the
operator's autoscale timer calls it, tests build ScalingPolicy directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trtop.api.spec import ScalingMetric, ScalingSpec

RateKind = Literal["pods", "percent"]
# "max": the policy allowing the biggest change wins (HPA default); "min": the smallest;
# "disabled": no change in that direction at all.
SelectPolicy = Literal["max", "min", "disabled"]


@dataclass(frozen=True)
class RatePolicy:
    """At most ``value`` pods (or percent of the replicas at the period's start) per period."""

    kind: RateKind
    value: int
    period_seconds: float

    def __post_init__(self) -> None:
        if self.kind not in ("pods", "percent"):
            raise ValueError(f"rate policy kind must be 'pods' or 'percent', got {self.kind!r}")
        if self.value <= 0:
            raise ValueError(f"rate policy value must be > 0, got {self.value}")
        if self.period_seconds <= 0:
            raise ValueError(f"rate policy period must be > 0 seconds, got {self.period_seconds}")


DEFAULT_SCALE_UP_POLICIES: tuple[RatePolicy, ...] = (
    RatePolicy("pods", 4, 15.0), RatePolicy("percent", 100, 15.0),
)
DEFAULT_SCALE_DOWN_POLICIES: tuple[RatePolicy, ...] = (RatePolicy("percent", 100, 15.0),)


@dataclass(frozen=True)
class ScalingPolicy:
    min_replicas: int = 1
    max_replicas: int = 4
    # What one replica's load is measured in: in-flight requests, requests per second, or
    # the mean milliseconds a request waited in the batching queue.
    metric: ScalingMetric = "inflight"
    # The per-replica value of ``metric`` the autoscaler aims for.
    target: float = 4.0
    # No change while |metric/target - 1| <= tolerance (HPA's hysteresis).
    tolerance: float = 0.1
    # Scale up to the lowest / down to the highest recommendation made within these windows.
    scale_up_window_seconds: float = 0.0
    scale_down_window_seconds: float = 300.0
    scale_up_policies: tuple[RatePolicy, ...] = DEFAULT_SCALE_UP_POLICIES
    scale_up_select: SelectPolicy = "max"
    scale_down_policies: tuple[RatePolicy, ...] = DEFAULT_SCALE_DOWN_POLICIES
    scale_down_select: SelectPolicy = "max"
    # A pod's sample older than this counts as missing; all samples stale => hold.
    max_metric_age_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"minReplicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"maxReplicas ({self.max_replicas}) must be >= 1 and >= minReplicas ({self.min_replicas})")
        if self.target <= 0:
            raise ValueError(f"the scaling target must be > 0, got {self.target}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.scale_up_window_seconds < 0 or self.scale_down_window_seconds < 0:
            raise ValueError("stabilization windows must be >= 0 seconds")
        if self.max_metric_age_seconds <= 0:
            raise ValueError(f"max metric age must be > 0 seconds, got {self.max_metric_age_seconds}")
        for name, select, rules in (("scale-up", self.scale_up_select, self.scale_up_policies),
                                    ("scale-down", self.scale_down_select, self.scale_down_policies)):
            if select not in ("max", "min", "disabled"):
                raise ValueError(f"{name} select policy must be max, min or disabled, got {select!r}")
            if select != "disabled" and not rules:
                raise ValueError(f"{name} needs at least one rate policy unless its select policy is 'disabled'")

    @property
    def longest_period_seconds(self) -> float:
        """How long scale events matter to the rate policies."""
        return max((p.period_seconds for p in self.scale_up_policies + self.scale_down_policies), default=0.0)


def policy_from_spec(spec: ScalingSpec, *, tolerance: float = 0.1,
                     max_metric_age_seconds: float = 60.0) -> ScalingPolicy:
    """ScalingPolicy for a parsed ``spec.scaling`` (rate policies keep the HPA defaults)."""
    return ScalingPolicy(
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        metric=spec.metric,
        target=spec.target,
        tolerance=tolerance,
        scale_up_window_seconds=float(spec.scale_up_window_seconds),
        scale_down_window_seconds=float(spec.scale_down_window_seconds),
        max_metric_age_seconds=max_metric_age_seconds,
    )
