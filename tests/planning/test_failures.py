"""Every failure is a status the planner computes: hostile specs, the store, nodes, foreign objects."""
import pytest

from trtop import names
from trtop.planning.facts import ClusterFacts, ObjectFact
from trtop.planning.plan import plan_model_deployment
from trtop.planning.status import events_between, with_failure

from .conftest import gpu_node, live_of, md_body, record_for

NOW = "2026-11-24T00:00:00Z"


def plan(body, facts, settings, **kw):
    return plan_model_deployment(body, facts, settings, now=NOW, **kw)


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def served(mixed_cluster, settings, body=None):
    """(facts with every engine Ready and the plan's units live and ready, the plan)."""
    body = body or md_body()
    first = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    records = {e.key: record_for(e) for e in first.engines}
    p = plan(body, ClusterFacts(nodes=mixed_cluster, records=records), settings)
    units, pods = live_of(p)
    svc = ObjectFact(applied_hash=p.service["metadata"]["annotations"][names.ANNOTATION_APPLIED_HASH])
    return ClusterFacts(nodes=mixed_cluster, records=records, units=units, pods=pods, service=svc), p


HOSTILE_SPECS = [
    {"model": {"uri": "s3://m/x"}, "engine": {"targets": ["auto", "8.9"]}},
    {"model": {"uri": "s3://m/x"}, "engine": {"targets": ["8.9", "8.9/NVIDIA-L4"]}},
    {"model": {"uri": "s3://m/x"}, "serving": {"resources": {"limits": {"cpu": "lots"}}}},
    {"model": {"uri": "s3://m/x"}, "rollout": {"maxSurge": "0", "maxUnavailable": "0"}},
    {"model": {"uri": "s3://m/x"}, "rollout": {"maxSurge": {"a": 1}}},
    {"model": {"uri": "s3://m/x"}, "serving": {"env": [{"name": "TRTOP_STORE_URI", "value": "/"}]}},
    {"model": {"uri": "s3://m/x"}, "scaling": {"minReplicas": 0}},
    {"model": {"uri": "s3://m/x"}, "engine": {"targets": [None]}},
    {"model": {"uri": ["s3://m/x"]}},
    {"model": {"uri": "s3://m/x"}, "scaling": "fast"},
    "not an object",
]


@pytest.mark.parametrize("spec", HOSTILE_SPECS)
def test_a_hostile_spec_always_gets_a_status(spec, mixed_cluster, settings):
    body = md_body()
    body["spec"] = spec
    p = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    assert p.status["observedGeneration"] == 1 and p.status["phase"] and p.status["conditions"]
    if p.spec is None:
        assert cond(p.status, "Stalled")["reason"] == "InvalidSpec" and p.to_apply == () and p.jobs_to_create == ()


@pytest.mark.parametrize("name", ["res.net", "r" * 100, "1st"])
def test_a_name_that_cannot_name_children_is_stalled(name, mixed_cluster, settings):
    body = md_body()
    body["metadata"]["name"] = name
    p = plan(body, ClusterFacts(nodes=mixed_cluster), settings)
    assert p.spec is None and cond(p.status, "Stalled")["reason"] == "InvalidSpec"
    assert "metadata.name" in p.status["message"]


def test_invalid_spec_keeps_the_conditions_of_what_still_serves(mixed_cluster, settings):
    facts, good = served(mixed_cluster, settings)
    body = md_body({"model": {"uri": "s3://m/x"}, "scaling": {"minReplicas": 0}}, generation=2,
                   status={**good.status, "conditions": good.status["conditions"]})
    p = plan(body, facts, settings)
    assert cond(p.status, "Stalled")["reason"] == "InvalidSpec" and p.status["observedGeneration"] == 2
    assert any(c["type"] == "Available" for c in p.status["conditions"])
    assert any(e.reason == "InvalidSpec" for e in events_between(body["status"], p.status))


def test_unreadable_store_builds_nothing_and_leaves_serving_untouched(mixed_cluster, settings):
    facts, _ = served(mixed_cluster, settings)
    one = dict(list(facts.records.items())[:1])  # the read failed after the first key
    from dataclasses import replace
    p = plan(md_body(), replace(facts, records=one, store_error="engine store s3://x unreadable: timeout"), settings)
    assert p.jobs_to_create == () and p.units == () and p.to_apply == () and p.to_delete == ()
    assert cond(p.status, "Ready")["reason"] == "StoreUnavailable"
    assert cond(p.status, "Reconciling")["status"] == "True" and "unreadable" in p.status["message"]
    assert cond(p.status, "Stalled")["status"] == "False"


def test_nothing_is_applied_when_live_objects_match(mixed_cluster, settings):
    facts, p = served(mixed_cluster, settings)
    again = plan(md_body(), facts, settings)
    assert again.to_apply == () and len(again.units) == 3
    assert cond(again.status, "Ready")["status"] == "True" and cond(again.status, "Reconciling")["status"] == "False"
    scaled = plan(md_body({"model": {"uri": "s3://models/resnet"}, "scaling": {"maxReplicas": 8}}), facts, settings,
                  autoscaled_replicas=3)
    assert [m["kind"] for m in scaled.to_apply] == ["Deployment"]  # only the unit that grows


def test_an_object_trtop_does_not_control_is_never_taken_over(mixed_cluster, settings):
    from dataclasses import replace
    facts, p = served(mixed_cluster, settings)
    taken = p.units[0]["metadata"]["name"]
    p = plan(md_body(), replace(facts, foreign_units=(taken,)), settings)
    assert p.to_apply == () and p.units == () and p.jobs_to_create == () and p.to_delete == ()
    assert cond(p.status, "Stalled")["reason"] == "NotOwned" and f"Deployment ml/{taken}" in p.status["message"]
    p = plan(md_body(), replace(facts, service=ObjectFact(foreign=True)), settings)
    assert p.to_apply == () and cond(p.status, "Stalled")["reason"] == "NotOwned"


@pytest.mark.parametrize("down", ["cordoned", "notready"])
def test_a_node_briefly_down_keeps_its_target_served(down, settings):
    from dataclasses import replace
    cluster = (gpu_node("h100-0", "h100"), gpu_node("l4-0", "l4"))
    facts, p = served(cluster, settings)
    assert len(p.targets) == 2
    gone = (cluster[0], replace(cluster[1], schedulable=False, down_since=1000.0))
    brief = plan(md_body(), replace(facts, nodes=gone, now=1000.0 + 60), settings)
    assert brief.targets == p.targets and brief.to_apply == ()
    long = plan(md_body(), replace(facts, nodes=gone, now=1000.0 + settings.node_grace_seconds + 1), settings)
    assert len(long.targets) == 1


def test_with_failure_says_why_and_keeps_the_planned_conditions(mixed_cluster, settings):
    p = plan(md_body(), ClusterFacts(nodes=mixed_cluster), settings)
    rejected = with_failure(p.status, [], "ApplyRejected", "the API server refused it: spec.x: Invalid value",
                            stalled=True, now=NOW)
    assert cond(rejected, "Stalled")["status"] == "True" and cond(rejected, "Ready")["reason"] == "ApplyRejected"
    assert cond(rejected, "EnginesReady") == cond(p.status, "EnginesReady") and rejected["phase"] == "Stalled"
    retry = with_failure(p.status, [], "APIUnavailable", "timed out", stalled=False, now=NOW)
    assert cond(retry, "Reconciling")["reason"] == "APIUnavailable" and cond(retry, "Stalled")["status"] == "False"


def test_one_event_per_reconcile_leads_with_the_first_warning():
    from trtop.planning.status import Event, one_event
    assert one_event([]) is None
    e = one_event([Event("Normal", "EngineReady", "a -> Ready"), Event("Normal", "PhaseProgressing", "p")])
    assert (e.type, e.reason) == ("Normal", "EngineReady") and e.message == "a -> Ready; p"
    e = one_event([Event("Normal", "EngineReady", "a"), Event("Warning", "EngineFailed", "b"),
                   Event("Warning", "PhaseDegraded", "c")])
    assert (e.type, e.reason) == ("Warning", "EngineFailed") and e.message.startswith("b; a")


def test_a_failure_no_check_foresaw_is_a_condition_and_an_event_not_a_traceback_loop(
        monkeypatch, settings, mixed_cluster, caplog):
    """The reconcile caught only the API's and the transport's errors: anything else (a ZeroDivisionError from a
    record's throughput was one) went up to the worker, which logged it and retried for ever while the object's status
    said nothing. Now it is Ready=False InternalError with the step and the error, a Warning Event, and a retry with
    backoff; the traceback is in the operator's log."""
    from trtop.handlers import modeldeployment as md

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    written = []
    monkeypatch.setattr(md, "gather", lambda body, settings: ClusterFacts(nodes=mixed_cluster))
    monkeypatch.setattr(md, "plan_model_deployment", broken)
    monkeypatch.setattr(md, "_write_status", lambda body, old, new: (written.append(new), (True, None, 1))[1])
    body = md_body()
    outcome = md._reconcile(body, settings, None, "", {})
    assert outcome.failure is not None and outcome.failure.reason == "InternalError" and not outcome.failure.stalled
    ready = cond(written[0], names.COND_READY)
    assert ready["reason"] == "InternalError" and "ZeroDivisionError: float division by zero" in ready["message"]
    assert "reading the cluster" in ready["message"] and "trtop bug" in ready["message"]
    assert [(e.type, e.reason) for e in events_between({}, written[0]) if e.reason == "InternalError"] == [
        ("Warning", "InternalError")]
    assert "Traceback" in caplog.text


def _merge(target, patch):
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def test_a_status_written_as_a_merge_patch_ends_as_planned_and_is_written_once():
    """A capacityUnit that went from benchmark to equal (every hold) kept its target and throughput on the server: it
    never equalled the plan, so every reconcile wrote it again, and the stored status said basis equal beside a
    throughput."""
    from trtop.planning.status import status_patch
    old = {"phase": "Ready", "capacityUnit": {"basis": "benchmark", "modelRevision": "r1", "target": "9.0",
                                             "throughput": 812.5, "message": "one replica = 812.5 samples/s"},
           "scaling": {"owner": "autoscaler"}}
    new = {"phase": "Progressing", "capacityUnit": {"basis": "equal", "modelRevision": "r1", "message": "held"}}
    patch = status_patch(old, new)
    assert patch["capacityUnit"] == {"basis": "equal", "target": None, "throughput": None, "message": "held"}
    stored = _merge(old, patch)
    assert stored["capacityUnit"] == new["capacityUnit"] and stored["phase"] == "Progressing"
    assert stored["scaling"] == {"owner": "autoscaler"}  # a field the plan does not have is another writer's
    assert status_patch(stored, new) == {}  # the next reconcile writes nothing
    deep = {"a": {"b": {"c": 1, "d": 2}, "e": [1]}}
    assert _merge(deep, status_patch(deep, {"a": {"b": {"c": 1}, "e": [2]}})) == {"a": {"b": {"c": 1}, "e": [2]}}
