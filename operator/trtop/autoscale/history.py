"""What the autoscaler remembers between decisions: past recommendations and scale events.

The HPA keeps the same two lists in the controller's memory: recommendations feed the
stabilization windows, scale events feed the rate policies. Here they are plain frozen data
that ``decide`` takes and returns, so the operator can hold them in memory per object or
store ``to_dict()`` in the object's status and survive a restart. Times are seconds on any
clock the caller uses consistently (epoch seconds when stored in status).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    """A change of the replica count the autoscaler asked for: ``change`` > 0 up, < 0 down."""

    at: float
    change: int


@dataclass(frozen=True)
class ScalingHistory:
    recommendations: tuple[Recommendation, ...] = ()
    events: tuple[ScaleEvent, ...] = ()

    def recommended_since(self, cutoff: float) -> list[int]:
        """Recommendations made strictly after ``cutoff`` (HPA: ``timestamp.After(cutoff)``)."""
        return [r.replicas for r in self.recommendations if r.at > cutoff]

    def added_since(self, cutoff: float) -> int:
        return sum(e.change for e in self.events if e.at > cutoff and e.change > 0)

    def removed_since(self, cutoff: float) -> int:
        return -sum(e.change for e in self.events if e.at > cutoff and e.change < 0)

    def recorded(self, now: float, recommendation: int, change: int,
                 keep_recommendations_s: float, keep_events_s: float) -> ScalingHistory:
        """This history plus one decision, minus what no window or rate period can see any more."""
        recs = tuple(r for r in self.recommendations if r.at > now - keep_recommendations_s)
        events = tuple(e for e in self.events if e.at > now - keep_events_s)
        if change:
            events += (ScaleEvent(now, change),)
        return ScalingHistory(_extremes(recs + (Recommendation(now, recommendation),)), events)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for ``status`` or a ConfigMap); ``from_dict`` reads it back."""
        return {
            "recommendations": [[r.at, r.replicas] for r in self.recommendations],
            "events": [[e.at, e.change] for e in self.events],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ScalingHistory:
        """Inverse of ``to_dict``; anything unreadable gives an empty history (a fresh start)."""
        if not raw:
            return cls()
        try:
            recs = tuple(Recommendation(float(a), int(r)) for a, r in raw.get("recommendations", ()))
            events = tuple(ScaleEvent(float(a), int(c)) for a, c in raw.get("events", ()))
        except (TypeError, ValueError):
            return cls()
        return cls(recs, events)


def _extremes(recs: tuple[Recommendation, ...]) -> tuple[Recommendation, ...]:
    """The recommendations that can still be a window's highest or lowest. A window is every
    recommendation since a cutoff, so one that a later one matches or exceeds, and a later one
    matches or undercuts, never decides either window again. What is left is a falling run and a
    rising run of counts (at most two per replica count), however long the windows (spec values
    with no upper bound) are."""
    kept: list[Recommendation] = []
    highest: int | None = None
    lowest: int | None = None
    for r in reversed(recs):
        if highest is None or lowest is None or not lowest <= r.replicas <= highest:
            kept.append(r)
        highest = r.replicas if highest is None else max(highest, r.replicas)
        lowest = r.replicas if lowest is None else min(lowest, r.replicas)
    return tuple(reversed(kept))
