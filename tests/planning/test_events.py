"""Which status changes are Events: every failure at once, one Normal Event per arrival at Ready."""
from trtop import names
from trtop.planning.facts import ClusterFacts
from trtop.planning.plan import plan_model_deployment
from trtop.planning.status import events_between

from .conftest import live_of, md_body, record_for

NOW = "2026-11-24T00:00:00Z"


def statuses(mixed_cluster, settings):
    """The statuses of a first rollout: Building, Progressing (Deployment applied), Ready."""
    body = md_body()
    building = plan_model_deployment(body, ClusterFacts(nodes=mixed_cluster), settings, now=NOW)
    records = {e.key: record_for(e) for e in building.engines}
    body["status"] = building.status
    progressing = plan_model_deployment(body, ClusterFacts(nodes=mixed_cluster, records=records), settings, now=NOW)
    units, pods = live_of(progressing)
    body["status"] = progressing.status
    ready = plan_model_deployment(body, ClusterFacts(nodes=mixed_cluster, records=records, units=units, pods=pods),
                                  settings, now=NOW)
    return building.status, progressing.status, ready.status


def test_a_first_rollout_is_one_normal_event_that_names_the_ready_engines(mixed_cluster, settings):
    building, progressing, ready = statuses(mixed_cluster, settings)
    assert (building["phase"], progressing["phase"], ready["phase"]) == ("Building", "Progressing", "Ready")
    assert events_between({}, building) == []
    assert events_between(building, progressing) == []
    (event,) = events_between(progressing, ready)
    assert (event.type, event.reason) == ("Normal", "PhaseReady")
    engines = next(c for c in ready["conditions"] if c["type"] == names.COND_ENGINES_READY)["message"]
    assert engines.startswith(f"{len(ready['engines'])}/{len(ready['engines'])} engines ready") and engines in event.message


def test_a_failed_engine_is_a_warning_at_once_even_while_building(mixed_cluster, settings):
    building, _, _ = statuses(mixed_cluster, settings)
    failed = {**building, "engines": [{**building["engines"][0], "state": "Failed", "message": "unsupported op Foo"},
                                      *building["engines"][1:]]}
    (event,) = events_between(building, failed)
    assert (event.type, event.reason) == ("Warning", "EngineFailed") and "unsupported op Foo" in event.message


def test_an_engine_ready_while_serving_stays_ready_is_an_event(mixed_cluster, settings):
    _, _, ready = statuses(mixed_cluster, settings)
    before = {**ready, "engines": [{**ready["engines"][0], "state": "Building"}, *ready["engines"][1:]]}
    (event,) = events_between(before, ready)
    assert (event.type, event.reason) == ("Normal", "EngineReady")
    assert ready["engines"][0]["key"] in event.message


def test_only_a_status_on_the_way_without_warnings_waits_for_the_applied_objects(mixed_cluster, settings):
    from trtop.handlers.modeldeployment import _on_the_way

    building, progressing, ready = statuses(mixed_cluster, settings)
    assert _on_the_way(building, progressing)  # the Deployment's events bring the next reconcile
    assert not _on_the_way({}, progressing)  # a new object gets its first status at once
    assert not _on_the_way(progressing, ready)  # Ready is written when reached
    failed = {**progressing, "engines": [{**progressing["engines"][0], "state": "Failed", "message": "x"},
                                         *progressing["engines"][1:]]}
    assert not _on_the_way(progressing, failed)  # a Warning is never deferred


def test_engines_ready_in_the_same_step_as_the_phase_are_named_by_the_phase_event(mixed_cluster, settings):
    building, _, ready = statuses(mixed_cluster, settings)
    (event,) = events_between(building, ready)  # the Progressing status was never written
    assert (event.type, event.reason) == ("Normal", "PhaseReady") and "engines ready" in event.message
    assert all(e["key"] in event.message for e in ready["engines"])  # each engine's step, with its build time


def test_engines_ready_in_an_earlier_quiet_step_are_named_by_the_phase_event(mixed_cluster, settings):
    _, progressing, ready = statuses(mixed_cluster, settings)
    assert all(e["state"] == "Ready" for e in progressing["engines"])  # told by no Event then (Progressing)
    (event,) = events_between(progressing, ready)
    assert event.reason == "PhaseReady"
    assert all(f"engine {e['key']}" in event.message and "built in" in event.message for e in ready["engines"])
