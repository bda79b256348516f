"""A scale the autoscaler decided is announced (a Scaled Event, status.lastScale) exactly once, even when its own
reconcile failed: the decision stands and the next reconcile applies it, so it is told once the status shows it.
Before, a status write that lost a race with another writer (HTTP 409) dropped the announcement for good: the next
round saw the status already at the new count, no change to tell (a CI run's scale to zero, no ScaledDown Event)."""
from __future__ import annotations

from typing import Any

import pytest

from trtop import names
from trtop.autoscale import Decision, ScalingHistory
from trtop.config import Settings
from trtop.handlers import autoscaling
from trtop.handlers.modeldeployment import Outcome
from trtop.handlers.scale_state import STATES, ScaleState
from trtop.k8s.errors import Failure


def body(desired: int) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.KIND,
            "metadata": {"name": "idle", "namespace": "ml", "uid": "u-idle", "resourceVersion": "7"},
            "spec": {}, "status": {"desiredReplicas": desired}}


def to(current: int, desired: int) -> Decision:
    return Decision(desired_replicas=desired, current_replicas=current, reason="no load for 0 s",
                    metric_value=0.0, recommendation=desired)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {"events": [], "status": [], "outcomes": []}
    monkeypatch.setattr(autoscaling, "post_event", lambda _b, type_, reason, message: calls["events"].append(
        (type_, reason, message)))
    monkeypatch.setattr(autoscaling, "patch_status", lambda _b, update: calls["status"].append(update) or {})
    monkeypatch.setattr(autoscaling.CACHE, "remember_status_write", lambda _r: None)
    monkeypatch.setattr(autoscaling, "reconcile", lambda *_a, **_k: calls["outcomes"].pop(0))
    STATES["u-idle"] = ScaleState(ScalingHistory())
    yield calls
    STATES.pop("u-idle", None)


def test_a_scale_whose_reconcile_failed_is_announced_once_the_status_shows_it(seen: dict[str, list[Any]]) -> None:
    conflict = Failure("APIUnavailable", "writing the status failed (HTTP 409 Conflict): the object was modified",
                       False)
    seen["outcomes"].append(Outcome(None, conflict))
    autoscaling._apply(body(1), to(1, 0), (), Settings())
    assert seen["events"] == []  # not told yet: it may not have happened
    autoscaling._apply(body(0), to(0, 0), (), Settings())  # another reconcile applied the decision
    assert seen["events"] == [("Normal", "ScaledDown", "replicas 1 -> 0: no load for 0 s")]
    assert seen["status"][-1]["lastScale"]["desired"] == 0
    autoscaling._apply(body(0), to(0, 0), (), Settings())
    assert len(seen["events"]) == 1  # once


def test_a_failed_scale_that_a_later_decision_overtook_is_not_announced(seen: dict[str, list[Any]]) -> None:
    seen["outcomes"].append(Outcome(None, Failure("APIUnavailable", "applying Deployment: timed out", False)))
    autoscaling._apply(body(1), to(1, 0), (), Settings())
    autoscaling._apply(body(1), to(1, 1), (), Settings())  # load came back before it applied: still 1
    assert seen["events"] == [] and not any("lastScale" in s for s in seen["status"])


def test_a_scale_whose_reconcile_succeeded_is_announced_at_once(seen: dict[str, list[Any]]) -> None:
    seen["outcomes"].append(Outcome(None))
    autoscaling._apply(body(2), to(2, 3), (), Settings())
    assert seen["events"] == [("Normal", "ScaledUp", "replicas 2 -> 3: no load for 0 s")]
    autoscaling._apply(body(3), to(3, 3), (), Settings())
    assert len(seen["events"]) == 1
