"""The autoscaler's last decision per ModelDeployment, shared by the autoscale and reconcile loops.

In memory on purpose: after a restart the live Deployment's replicas are the starting
point, and a fresh history makes scale-down wait a full window (the HPA does the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trtop.autoscale import ScalingHistory


@dataclass
class ScaleState:
    history: ScalingHistory
    desired: int | None = None
    limit: str = ""  # ScalingLimited message while capped by GPUs
    wake_failing: bool = False  # the wake query failed the last time it was asked (one Warning Event per streak)
    # A change decided whose own reconcile failed (its status write lost a race with another writer, say): the
    # decision stands in ``desired`` and the next reconcile applies it, so it is announced (Event, lastScale) once
    # the status shows it. (direction, Event message, the lastScale reading)
    unannounced: tuple[str, str, dict[str, Any]] | None = None


STATES: dict[str, ScaleState] = {}


def last_decision(uid: str) -> tuple[int | None, str]:
    """(replicas, capacity message) of the last decision; (None, "") before the first."""
    state = STATES.get(uid)
    return (state.desired, state.limit) if state else (None, "")
