"""minReplicas 0 with the builtin autoscaler: allowed where the operator has a way back from zero (its wake query),
refused with a status that names the setting where it has none; a new object still starts with one replica, and at
zero every unit keeps its Deployment (0 pods) so that waking is a replica change, not a new rollout."""
from __future__ import annotations

import pytest

from trtop.config import Settings, wake_query_for
from trtop.planning.facts import ClusterFacts
from trtop.planning.plan import plan_model_deployment

from .conftest import gpu_node, live_of, md_body, record_for

NOW = "2026-12-02T00:00:00Z"
ZERO = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"},
        "scaling": {"mode": "builtin", "minReplicas": 0, "maxReplicas": 4}}
WAKE = 'sum(gateway_requests_waiting{namespace="$namespace", model="$name"})'
NODES = (gpu_node("h100-0", "h100"), gpu_node("l4-0", "l4", gpus=2))


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def waking(settings: Settings) -> Settings:
    return Settings(store_uri=settings.store_uri, tensorrt_version=settings.tensorrt_version,
                    prometheus_url="http://prometheus:9090", wake_query=WAKE)


def served(settings: Settings, **kw):
    facts = ClusterFacts(nodes=NODES)
    first = plan_model_deployment(md_body(ZERO), facts, settings, now=NOW)
    facts = ClusterFacts(nodes=NODES, records={e.key: record_for(e) for e in first.engines})
    return facts, plan_model_deployment(md_body(ZERO, **kw), facts, settings, now=NOW)


def test_without_a_wake_query_builtin_zero_is_an_invalid_spec_naming_the_setting(settings):
    _, p = served(settings)
    assert p.spec is None and p.units == () and p.jobs_to_create == ()
    stalled = cond(p.status, "Stalled")
    assert stalled["reason"] == "InvalidSpec" and "operator.wakeQuery" in stalled["message"]
    external = {**ZERO, "scaling": {**ZERO["scaling"], "mode": "external"}}
    assert plan_model_deployment(md_body(external), ClusterFacts(nodes=NODES), settings, now=NOW).spec is not None


def test_a_new_object_starts_with_one_replica_then_scales_to_zero_and_back(settings):
    s = waking(settings)
    facts, p = served(s)
    assert p.spec is not None and p.status["desiredReplicas"] == 1
    assert sum(u["spec"]["replicas"] for u in p.units) == 1
    units, pods = live_of(p, ready=True)
    from dataclasses import replace
    facts = replace(facts, units=units, pods=pods)
    zero = plan_model_deployment(md_body(ZERO, status=p.status), facts, s, autoscaled_replicas=0, now=NOW)
    assert len(zero.units) == 2 and [u["spec"]["replicas"] for u in zero.units] == [0, 0]  # kept, at 0 pods
    assert zero.to_delete == () and zero.status["desiredReplicas"] == 0
    assert cond(zero.status, "Available")["reason"] == "ScaledToZero" and cond(zero.status, "Ready")["status"] == "True"
    units, pods = live_of(zero, ready=True)
    facts = replace(facts, units=units, pods=pods)
    # Nothing else asks (the autoscaler's state lost in a restart): it stays at zero, not back at one.
    assert plan_model_deployment(md_body(ZERO, status=zero.status), facts, s, now=NOW).status["desiredReplicas"] == 0
    woken = plan_model_deployment(md_body(ZERO, status=zero.status), facts, s, autoscaled_replicas=2, now=NOW)
    assert sum(u["spec"]["replicas"] for u in woken.units) == 2 and woken.status["desiredReplicas"] == 2


def test_the_wake_query_names_its_object_and_refuses_unknown_placeholders():
    assert wake_query_for(WAKE, "team-a", "resnet") == \
        'sum(gateway_requests_waiting{namespace="team-a", model="resnet"})'
    assert wake_query_for('x{a=~"b$$"} > $name', "ns", 'q"\\') == 'x{a=~"b$"} > q\\"\\\\'
    with pytest.raises(ValueError, match=r"\$namespace and \$name"):
        Settings(prometheus_url="http://p", wake_query="sum(x{pod=\"$pod\"})")
    with pytest.raises(ValueError, match="TRTOP_PROMETHEUS_URL"):
        Settings(wake_query=WAKE)
    env = {"TRTOP_PROMETHEUS_URL": "http://p:9090", "TRTOP_WAKE_QUERY": f"  {WAKE}\n"}
    assert Settings.from_env(env).wake_query == WAKE
