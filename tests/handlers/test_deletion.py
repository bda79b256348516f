"""What the handlers keep per object in memory (reconcile locks, the autoscaler's decisions, which
engines were counted built or reused) leaves when the object is deleted: the process lives for
months over thousands of objects. Driven through the real cache's delete event (``CACHE``), as
the watch would."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from trtop import names
from trtop.api.spec import ScalingMetric
from trtop.autoscale.load import LoadReading, PodEndpoint
from trtop.config import Settings
from trtop.handlers import autoscaling, modeldeployment
from trtop.handlers.scale_state import STATES
from trtop.k8s.cache import CACHE

NS = "test-deletion"
BUILTIN = {"model": {"uri": "s3://m/a"}, "scaling": {"mode": "builtin", "minReplicas": 1, "maxReplicas": 4}}


def md(name: str, spec: Any = None) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.KIND, "spec": spec or {"model": {"uri": "s3://m/a"}},
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"}}


def unit(owner: dict[str, Any]) -> dict[str, Any]:
    """A serving unit of ``owner`` (what ``CACHE.units`` lists)."""
    meta = owner["metadata"]
    return {"metadata": {"name": f"{meta['name']}-sm89", "namespace": NS, "resourceVersion": "2",
                         "labels": {names.LABEL_TARGET: "sm89"},
                         "ownerReferences": [{"uid": meta["uid"], "controller": True}]},
            "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}


@pytest.fixture(autouse=True)
def clean_cache() -> Iterator[None]:
    """The shared cache holds none of this test's objects afterwards, passed or failed."""
    yield
    for key in [k for k in CACHE.keys() if k[0] == NS]:
        body = CACHE.model_deployment(key)
        assert body is not None
        CACHE.on_model_deployment("DELETED", body)


def test_the_reconcile_lock_and_engine_counts_of_a_deleted_object_leave_with_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modeldeployment, "_reconcile", lambda *_: modeldeployment.Outcome(None))
    a, b = md("a"), md("b")
    for body in (a, b):
        CACHE.on_model_deployment("ADDED", body)
        modeldeployment.reconcile(body, Settings())
    modeldeployment._job_created(a, {"metadata": {"name": "trtop-sm89-own", "labels": {
        names.LABEL_ENGINE_KEY: "k-own", names.LABEL_TARGET: "sm89"}}})
    ready = [SimpleNamespace(key=k, state="Ready") for k in ("k-own", "k-shared")]
    modeldeployment._count_engines(SimpleNamespace(engines=ready))  # type: ignore[arg-type]
    CACHE.handled((NS, "a"), 1, ("k-own", "k-shared"))  # what the worker records after each plan
    CACHE.handled((NS, "b"), 1, ("k-shared",))
    assert {"uid-a", "uid-b"} <= set(modeldeployment._locks)

    CACHE.on_model_deployment("DELETED", a)
    assert "uid-a" not in modeldeployment._locks and "uid-b" in modeldeployment._locks
    assert "k-own" not in modeldeployment._seen_ready and "k-own" not in modeldeployment._built_by_us
    assert "k-shared" in modeldeployment._seen_ready  # b still serves it: not counted a second time

    CACHE.on_model_deployment("DELETED", b)
    assert "uid-b" not in modeldeployment._locks and "k-shared" not in modeldeployment._seen_ready


class Holding:
    """A load source with no readings (the decision holds); ``during`` runs while it reads."""

    def __init__(self, during: Any = None) -> None:
        self.during = during

    async def read(self, pods: Sequence[PodEndpoint], metric: ScalingMetric) -> LoadReading:
        if self.during is not None:
            self.during()
        return LoadReading(samples=())


async def test_the_autoscalers_decisions_for_a_deleted_object_leave_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoscaling, "_apply", lambda *_: None)
    body = md("s", BUILTIN)
    CACHE.on_model_deployment("ADDED", body)
    CACHE.on_deployment("ADDED", unit(body))
    await autoscaling.autoscale_once(Settings(), Holding())
    assert "uid-s" in STATES
    CACHE.on_deployment("DELETED", unit(body))
    CACHE.on_model_deployment("DELETED", body)
    assert "uid-s" not in STATES


async def test_an_object_deleted_while_its_load_is_read_leaves_no_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoscaling, "_apply", lambda *_: None)
    body = md("r", BUILTIN)
    CACHE.on_model_deployment("ADDED", body)
    CACHE.on_deployment("ADDED", unit(body))
    await autoscaling.autoscale_once(Settings(), Holding(during=lambda: CACHE.on_model_deployment("DELETED", body)))
    CACHE.on_deployment("DELETED", unit(body))
    assert "uid-r" not in STATES


def test_a_reconcile_that_outlives_its_objects_delete_leaves_no_lock_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    body = md("late")
    CACHE.on_model_deployment("ADDED", body)

    def deleted_meanwhile(*_: Any) -> modeldeployment.Outcome:
        CACHE.on_model_deployment("DELETED", body)  # the delete's forgetting runs while the lock is held
        return modeldeployment.Outcome(None)

    monkeypatch.setattr(modeldeployment, "_reconcile", deleted_meanwhile)
    modeldeployment.reconcile(body, Settings())
    assert "uid-late" not in modeldeployment._locks
    # A reconcile that starts from a body read before the delete (a queued one) leaves none either.
    monkeypatch.setattr(modeldeployment, "_reconcile", lambda *_: modeldeployment.Outcome(None))
    modeldeployment.reconcile(body, Settings())
    assert "uid-late" not in modeldeployment._locks
    live = md("live")
    CACHE.on_model_deployment("ADDED", live)
    modeldeployment.reconcile(live, Settings())
    assert "uid-live" in modeldeployment._locks  # a live object's lock stays (the next reconcile waits on it)
