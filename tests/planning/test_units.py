"""Serving units: one per architecture; a type joining or leaving touches no other unit; Ready holds.

Each test drives the pure planner through the steps a cluster goes through: plan, "apply"
(the units become live with their pods, ready or not), plan again.
"""
from __future__ import annotations

import re
from dataclasses import replace

from trtop import names
from trtop.config import Settings
from trtop.planning.facts import ClusterFacts, DeploymentFact, ObjectFact
from trtop.planning.plan import plan_model_deployment
from trtop.planning.serving import unit_name

from .conftest import gpu_node, live_of, md_body, record_for

NOW = "2026-12-02T00:00:00Z"
SPEC = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"}, "replicas": 2, "scaling": {"mode": "none"}}
BASE = (gpu_node("h100-0", "h100"), gpu_node("a100-0", "a100"), gpu_node("l4-0", "l4", gpus=1))


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def plan(facts, settings, status=None, spec=SPEC):
    return plan_model_deployment(md_body(spec, status=status), facts, settings, now=NOW)


def with_records(nodes, settings, throughput=None):
    first = plan(ClusterFacts(nodes=nodes), settings)
    records = {}
    for e in first.engines:
        r = record_for(e)
        if throughput:
            r = replace(r, benchmark={"batch_opt": {"throughput": throughput[e.target.cc]}})
        records[e.key] = r
    return ClusterFacts(nodes=nodes, records=records)


def applied(facts, p, *, ready=True, keep_pods=()):
    """The cluster after ``p`` is carried out: its units live (pods ready or not), deletions done."""
    units, pods = live_of(p, ready=ready)
    svc = ObjectFact(applied_hash=p.service["metadata"]["annotations"][names.ANNOTATION_APPLIED_HASH])
    return replace(facts, units=units, pods=pods + tuple(keep_pods), service=svc,
                   deployment=None if any(d.target == "" for d in p.to_delete) else facts.deployment)


def settled(facts, settings, status=None):
    """Plan, apply with every pod ready, plan again: (facts, plan, status)."""
    p = plan(facts, settings, status)
    facts = applied(facts, p)
    p = plan(facts, settings, p.status)
    return facts, p


def by_name(p):
    return {u["metadata"]["name"]: u for u in p.units}


def test_one_unit_per_architecture_each_naming_only_its_engine(settings):
    facts, p = settled(with_records(BASE, settings), settings)
    assert len(p.units) == 3 and p.to_apply == () and cond(p.status, "Ready")["status"] == "True"
    for unit in p.units:
        (term,) = unit["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        env = {e["name"]: e.get("value") for e in unit["spec"]["template"]["spec"]["containers"][0]["env"]}
        (entry,) = __import__("json").loads(env[names.ENV_ENGINE_SET])
        assert entry["key"] == unit["metadata"]["annotations"][names.ANNOTATION_ENGINE_KEYS]
        assert len(entry["sha256"]) == 64 and unit["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        slug = unit["metadata"]["labels"][names.LABEL_TARGET]
        assert unit["spec"]["selector"]["matchLabels"][names.LABEL_TARGET] == slug
        assert unit["spec"]["template"]["metadata"]["labels"][names.LABEL_TARGET] == slug
        assert unit["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert names.LABEL_TARGET not in p.service["spec"]["selector"]  # the Service selects every unit's pods
    assert p.status["replicas"] == p.status["readyReplicas"] == 2
    assert sum(u["replicas"] for u in p.status["units"]) == 2


def test_unit_names_are_dns_labels_of_at_most_63_and_distinct(settings):
    long = "m" * 63
    body = md_body(SPEC)
    body["metadata"]["name"] = long
    p = plan_model_deployment(body, with_records(BASE, settings), settings, now=NOW)
    got = [u["metadata"]["name"] for u in p.units]
    assert len(set(got)) == 3 and all(len(n) <= 63 and re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", n) for n in got)
    assert unit_name("resnet", p.engines[0].target).startswith("resnet-sm")


def test_a_new_architecture_adds_a_unit_and_changes_no_other(settings):
    facts, before = settled(with_records(BASE, settings), settings)
    nodes = BASE + (gpu_node("b200-0", "b200", gpus=4),)
    joining = plan(replace(facts, nodes=nodes), settings, before.status)
    assert len(joining.jobs_to_create) == 1 and joining.to_apply == ()  # building: nobody touched
    assert cond(joining.status, "Ready")["status"] == "True"  # still serving the spec with its capacity
    assert cond(joining.status, "Reconciling")["status"] == "True"
    b200 = next(e for e in joining.engines if e.target.cc == "10.0")
    facts = replace(facts, nodes=nodes, records={**facts.records, b200.key: record_for(b200)})
    joined = plan(facts, settings, joining.status)
    new = [u for u in joined.units if u["metadata"]["name"] not in by_name(before)]
    assert [m["metadata"]["name"] for m in joined.to_apply] == [new[0]["metadata"]["name"]]
    assert new[0]["spec"]["replicas"] == 0  # the asked capacity is carried already: nobody moves
    assert {n: u for n, u in by_name(joined).items() if n in by_name(before)} == by_name(before)
    assert cond(joined.status, "Ready")["status"] == "True"


def test_a_leaving_architecture_goes_once_the_others_carry_its_load(settings):
    l4_first = Settings(**{**settings.__dict__, "placement_preference": ("NVIDIA-L4",)})
    facts, p = settled(with_records(BASE, l4_first), l4_first)
    on = {u["target"]: u["replicas"] for u in p.status["units"]}
    assert on["8.9/NVIDIA-L4"] == 1 and sum(on.values()) == 2  # L4 first, as far as its one GPU goes
    l4_unit = next(u for u in p.units if "nvidia-l4" in u["metadata"]["name"])
    l4_pods = [x for x in facts.pods if x.target == l4_unit["metadata"]["labels"][names.LABEL_TARGET]]
    gone = tuple(replace(n, schedulable=False, down_since=1000.0) if n.name == "l4-0" else n for n in BASE)
    late = replace(facts, nodes=gone, now=1000.0 + l4_first.node_grace_seconds + 1)
    leaving = plan(late, l4_first, p.status)
    assert [e.target.cc for e in leaving.engines] == ["8.0", "9.0"]
    assert leaving.to_delete == ()  # its pods serve until the others are ready
    grown = [m for m in leaving.to_apply if m["kind"] == "Deployment"]
    assert len(grown) == 1 and grown[0]["spec"]["replicas"] == 2  # the other units scale up first
    assert grown[0]["spec"]["template"] == by_name(p)[grown[0]["metadata"]["name"]]["spec"]["template"]
    assert cond(leaving.status, "Ready")["status"] == "True"
    assert [u["state"] for u in leaving.status["units"] if u["target"] == l4_unit["metadata"]["labels"][
        names.LABEL_TARGET]] == ["Leaving"]
    # The grown unit's new pod is not ready yet: still nothing deleted, still Ready.
    old_l4 = next(u for u in facts.units if u.name == l4_unit["metadata"]["name"])
    starting = applied(late, leaving, ready=False, keep_pods=l4_pods)
    # ... except the grown unit's first pod (it was there before); the L4 unit and its pods still live.
    starting = replace(starting, units=starting.units + (old_l4,), pods=tuple(
        replace(x, ready=True) if i == 0 else x for i, x in enumerate(starting.pods)))
    mid = plan(starting, l4_first, leaving.status)
    assert mid.to_delete == () and cond(mid.status, "Ready")["status"] == "True", mid.status["message"]
    carried = replace(starting, pods=tuple(replace(x, ready=True) for x in starting.pods))
    done = plan(carried, l4_first, mid.status)
    assert [d.name for d in done.to_delete] == [old_l4.name] and done.to_apply == ()
    assert cond(done.status, "Ready")["status"] == "True"


def test_the_single_deployment_of_before_units_goes_once_units_are_ready(settings):
    facts = with_records(BASE, settings)
    first = plan(facts, settings)
    legacy = DeploymentFact("resnet", "x", first.status["modelRevision"], 2, 2, 2, True, ("e-old",))
    facts = replace(facts, deployment=legacy)
    moving = plan(facts, settings, {"desiredReplicas": 2})
    assert len(moving.units) == 3 and moving.to_delete == ()
    assert cond(moving.status, "Ready")["status"] == "True"  # the old pods carry the load meanwhile
    starting = plan(applied(facts, moving, ready=False), settings, moving.status)
    assert starting.to_delete == () and cond(starting.status, "Ready")["status"] == "True"
    ready = plan(applied(facts, moving), settings, moving.status)
    assert [d.name for d in ready.to_delete] == ["resnet"] and cond(ready.status, "Ready")["status"] == "True"


def test_capacity_is_split_by_verified_throughput_and_shown_per_unit(settings):
    speeds = {"9.0": 300.0, "8.0": 150.0, "8.9": 100.0}
    nodes = (gpu_node("h100-0", "h100", gpus=1), gpu_node("a100-0", "a100", gpus=1), gpu_node("l4-0", "l4", gpus=8))
    spec = {**SPEC, "replicas": 3}
    p = plan(with_records(nodes, settings, speeds), settings, spec=spec)
    on = {u["target"].split("/")[0]: u for u in p.status["units"]}
    assert (on["9.0"]["replicas"], on["8.0"]["replicas"], on["8.9"]["replicas"]) == (1, 1, 5)
    assert on["8.0"]["capacityPerReplica"] == 0.5 and on["8.9"]["capacityPerReplica"] == 0.333
    assert on["9.0"]["share"] == "32%" and on["8.9"]["throughput"] == 100.0
    unit = p.status["capacityUnit"]
    assert unit["basis"] == "benchmark" and unit["throughput"] == 300.0 and unit["target"].startswith("9.0")


def test_a_faster_type_joining_keeps_what_a_replica_means(settings):
    speeds = {"9.0": 300.0, "8.0": 150.0, "8.9": 100.0, "10.0": 600.0}
    facts, p = settled(with_records(BASE, settings, speeds), settings)
    nodes = BASE + (gpu_node("b200-0", "b200"),)
    joined = plan(with_records(nodes, settings, speeds), settings, p.status)
    assert joined.status["capacityUnit"]["throughput"] == 300.0
    assert next(u for u in joined.status["units"] if u["target"].startswith("10.0"))["capacityPerReplica"] == 2.0


def test_without_benchmarks_every_pod_counts_one_and_the_status_says_so(settings):
    facts = with_records(BASE, settings)
    one = next(iter(facts.records))
    facts = replace(facts, records={**facts.records, one: replace(facts.records[one], benchmark={})})
    p = plan(facts, settings)
    assert p.status["capacityUnit"]["basis"] == "equal" and "no benchmark throughput" in \
        p.status["capacityUnit"]["message"]
    assert {u["capacityPerReplica"] for u in p.status["units"]} == {1.0}


def test_no_free_gpu_anywhere_is_said_in_scaling_limited(settings):
    nodes = (gpu_node("h100-0", "h100", gpus=1),)
    p = plan(with_records(nodes, settings), settings, spec={**SPEC, "replicas": 3})
    assert sum(u["spec"]["replicas"] for u in p.units) == 3  # they wait Pending, as a Deployment's would
    assert cond(p.status, "ScalingLimited")["status"] == "True" and "wait for free GPUs" in \
        cond(p.status, "ScalingLimited")["message"]


def test_units_joining_and_leaving_are_events(settings):
    from trtop.planning.status import events_between
    facts, p = settled(with_records(BASE, settings), settings)
    assert not [e for e in events_between({}, p.status) if e.reason.startswith("Unit")]  # the first rollout's
    fewer_first = {**p.status, "units": p.status["units"][1:]}
    joined = events_between(fewer_first, p.status)
    assert any(e.reason == "UnitAdded" and p.status["units"][0]["name"] in e.message for e in joined)
    fewer = {**p.status, "units": p.status["units"][:2]}
    assert [e.reason for e in events_between(p.status, fewer) if e.reason.startswith("Unit")] == ["UnitRemoved"]
    assert not [e for e in events_between(p.status, p.status) if e.reason.startswith("Unit")]


def test_pods_no_node_can_take_move_to_an_architecture_with_room(settings):
    """Objects planned at once can all count the same last free GPUs: the losers' pods stay
    Pending (Unschedulable) until their capacity is placed again where there is room."""
    nodes = (gpu_node("h100-0", "h100", gpus=1), gpu_node("a100-0", "a100", gpus=4))
    facts = with_records(nodes, settings)
    p = plan(facts, settings, spec={**SPEC, "replicas": 1})
    assert [u["spec"]["replicas"] for u in p.units] == [0, 1]  # A100, H100: the newest with room
    units, pods = live_of(p, ready=False)
    full = tuple(replace(n, gpu_requested=1) if n.name == "h100-0" else n for n in nodes)  # another took it
    stuck = tuple(replace(x, unschedulable=True) for x in pods)
    again = plan(replace(facts, nodes=full, units=units, pods=stuck), settings, p.status, spec={**SPEC, "replicas": 1})
    assert {m["metadata"]["name"]: m["spec"]["replicas"] for m in again.to_apply if m["kind"] == "Deployment"} == {
        p.units[0]["metadata"]["name"]: 1, p.units[1]["metadata"]["name"]: 0}
    nowhere = tuple(replace(n, gpu_requested=n.gpu_allocatable) for n in nodes)
    held = plan(replace(facts, nodes=nowhere, units=units, pods=stuck), settings, p.status, spec={**SPEC, "replicas": 1})
    assert [u["spec"]["replicas"] for u in held.units] == [0, 1]  # no room anywhere: it waits where it is
    assert cond(held.status, "ScalingLimited")["status"] == "True"


def test_pods_the_api_server_refuses_are_named_in_scaling_limited_with_one_warning(settings):
    """A ResourceQuota (or a LimitRange, a webhook) refuses a unit's pods at creation: they never exist, so no pod
    fact tells it; the unit's ReplicaFailure does. The status names the unit and the API server's words, Ready's
    message points there, and one Warning Event says it when it starts."""
    from trtop.planning.status import events_between
    nodes = (gpu_node("h100-0", "h100", gpus=4),)
    facts = with_records(nodes, settings)
    spec = {**SPEC, "replicas": 3}
    p = plan(facts, settings, spec=spec)
    units, pods = live_of(p, replicas={p.units[0]["metadata"]["name"]: 1})
    quota = ('pods "m-sm90-x-5f6" is forbidden: exceeded quota: gpu, requested: requests.nvidia.com/gpu=1, '
             "used: requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1")
    refused = (replace(units[0], replicas=3, refused=quota),)
    again = plan(replace(facts, units=refused, pods=pods), settings, p.status, spec=spec)
    limited = cond(again.status, "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "PodsRefused")
    assert units[0].name in limited["message"] and "exceeded quota" in limited["message"]
    assert cond(again.status, "Ready")["status"] == "False"
    assert "refuses the rest: see ScalingLimited" in cond(again.status, "Ready")["message"]
    warned = [e for e in events_between(p.status, again.status) if e.reason == "PodsRefused"]
    assert len(warned) == 1 and warned[0].type == "Warning" and "exceeded quota" in warned[0].message
    assert not [e for e in events_between(again.status, again.status) if e.reason == "PodsRefused"]
    fixed = plan(replace(facts, units=(replace(units[0], replicas=3, ready_replicas=3),), pods=pods * 3), settings,
                 again.status, spec=spec)
    assert cond(fixed.status, "ScalingLimited")["status"] == "False"


def test_a_refused_unit_carries_its_namespaces_quota_limits_so_a_raised_quota_is_applied_to_it(settings):
    """While the API server refuses a unit's pods, the unit is marked with the namespace's quota limits: a raised
    quota changes the mark, so the Deployment is applied and (the Deployment controller copying its annotations to
    the ReplicaSet) its ReplicaSet tries again at once, not after a back-off of up to 1000 s. The same limits apply
    nothing; a refusal that ends keeps the mark (no write for it); no quota, no mark."""
    def applies(p):
        return [m["metadata"]["name"] for m in p.to_apply if m["kind"] == "Deployment"]

    nodes = (gpu_node("h100-0", "h100", gpus=4),)
    facts = with_records(nodes, settings)
    spec = {**SPEC, "replicas": 3}
    p = plan(replace(facts, admission_state="q1"), settings, spec=spec)
    assert names.ANNOTATION_QUOTA_RETRY not in p.units[0]["metadata"]["annotations"]  # nothing refused yet
    units, pods = live_of(p, replicas={p.units[0]["metadata"]["name"]: 1})
    refused = replace(units[0], replicas=3, refused="exceeded quota: gpu")
    marked = plan(replace(facts, units=(refused,), pods=pods, admission_state="q1"), settings, p.status, spec=spec)
    (unit,) = marked.units
    assert unit["metadata"]["annotations"][names.ANNOTATION_QUOTA_RETRY] == "q1" and applies(marked)
    assert unit["spec"]["template"] == p.units[0]["spec"]["template"]  # metadata only: no pod restarts
    live = replace(refused, quota_retry="q1",
                   applied_hash=unit["metadata"]["annotations"][names.ANNOTATION_APPLIED_HASH])
    same = plan(replace(facts, units=(live,), pods=pods, admission_state="q1"), settings, marked.status, spec=spec)
    assert not applies(same)  # the same limits: nothing to apply again
    raised = plan(replace(facts, units=(live,), pods=pods, admission_state="q2"), settings, marked.status, spec=spec)
    assert applies(raised) and raised.units[0]["metadata"]["annotations"][names.ANNOTATION_QUOTA_RETRY] == "q2"
    served = replace(live, refused="", ready_replicas=3, replicas=3)
    after = plan(replace(facts, units=(served,), pods=pods * 3, admission_state="q3"), settings, marked.status, spec=spec)
    assert after.units[0]["metadata"]["annotations"][names.ANNOTATION_QUOTA_RETRY] == "q1" and not applies(after)
    webhook = plan(replace(facts, units=(refused,), pods=pods), settings, p.status, spec=spec)  # no quota there
    assert names.ANNOTATION_QUOTA_RETRY not in webhook.units[0]["metadata"]["annotations"]


def _rolling(settings, rollout=None):
    """A full H100 (2 GPUs, 2 ready pods of the first template), then a template change: (facts, plan of the
    change, the new template's hash, the spec)."""
    nodes = (gpu_node("h100-0", "h100", gpus=2),)
    facts, p = settled(with_records(nodes, settings), settings)
    facts = replace(facts, nodes=(gpu_node("h100-0", "h100", gpus=2, requested=2),))
    spec = {**SPEC, "serving": {"podAnnotations": {"team": "b"}}, **({"rollout": rollout} if rollout else {})}
    changed = plan(facts, settings, p.status, spec=spec)
    template = changed.units[0]["metadata"]["annotations"][names.ANNOTATION_TEMPLATE_HASH]
    return facts, changed, template, spec


def _strategy(unit):
    return unit["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], \
        unit["metadata"]["annotations"].get(names.ANNOTATION_ROLLOUT_IN_PLACE)


def test_a_rollout_on_a_full_gpu_type_replaces_pods_in_place_until_it_is_done(settings):
    """users.md 11: "blue/green upgrades need twice the GPUs and stall when the cluster is full". With
    maxUnavailable 0 the new pod waits for a GPU beside the old ones: on a full type, for ever. Once it finds no
    node and no GPU of the type is free, the unit rolls one pod fewer at a time (maxUnavailable 1), says so, and
    keeps that until no old pod is left, then goes back to the spec's strategy (no pod rolls for it)."""
    from trtop.planning.facts import PodFact
    from trtop.planning.status import events_between
    facts, changed, template, spec = _rolling(settings)
    (unit,) = changed.units
    assert _strategy(unit) == (0, None)  # a rollout starts as the spec says
    old = tuple(p for p in facts.pods)
    pending = PodFact("new-0", old[0].target, template, ready=False, unschedulable=True)
    stuck = plan(replace(facts, pods=old + (pending,)), settings, changed.status, spec=spec)
    (unit,) = stuck.units
    assert _strategy(unit) == (1, "true") and stuck.to_apply  # applied: the Deployment takes one old pod down
    assert unit["metadata"]["annotations"][names.ANNOTATION_TEMPLATE_HASH] == template  # no other roll for it
    assert stuck.status["units"][0]["rollout"] == "InPlace"
    assert "one pod fewer at a time" in cond(stuck.status, "Reconciling")["message"]
    (told,) = [e for e in events_between(changed.status, stuck.status) if e.reason == "RolloutInPlace"]
    assert unit["metadata"]["name"] in told.message
    assert not [e for e in events_between(stuck.status, stuck.status) if e.reason == "RolloutInPlace"]
    # The new pod took the GPU an old one freed: nothing Pending, a GPU free for a moment; still in place.
    (live,) = facts.units
    live = replace(live, in_place=True, applied_hash=unit["metadata"]["annotations"][names.ANNOTATION_APPLIED_HASH])
    midway = replace(facts, units=(live,), pods=(old[0], PodFact("new-0", old[0].target, template, ready=True)),
                     nodes=(gpu_node("h100-0", "h100", gpus=2, requested=1),))
    again = plan(midway, settings, stuck.status, spec=spec)
    assert _strategy(again.units[0]) == (1, "true") and not again.to_apply  # no flapping
    done = replace(midway, pods=tuple(PodFact(f"new-{i}", old[0].target, template, ready=True) for i in range(2)),
                   nodes=(gpu_node("h100-0", "h100", gpus=2, requested=2),))
    after = plan(done, settings, again.status, spec=spec)
    assert _strategy(after.units[0]) == (0, None) and after.to_apply  # the spec's strategy again
    assert "rollout" not in after.status["units"][0] and cond(after.status, "Ready")["status"] == "True"


def test_a_rollout_that_may_wait_or_can_take_pods_down_is_left_as_the_spec_says(settings):
    from trtop.planning.facts import PodFact
    for rollout in ({"whenFull": "Wait"}, {"maxUnavailable": "1"}, {"maxUnavailable": "50%"}):
        facts, changed, template, spec = _rolling(settings, rollout)
        pending = PodFact("new-0", facts.pods[0].target, template, ready=False, unschedulable=True)
        stuck = plan(replace(facts, pods=facts.pods + (pending,)), settings, changed.status, spec=spec)
        assert _strategy(stuck.units[0])[1] is None and "rollout" not in stuck.status["units"][0], rollout
    # Room on the type: the new pod is only waiting for the scheduler, nothing to change.
    facts, changed, template, spec = _rolling(settings)
    roomy = replace(facts, nodes=(gpu_node("h100-0", "h100", gpus=3, requested=2),),
                    pods=facts.pods + (PodFact("new-0", facts.pods[0].target, template),))
    assert _strategy(plan(roomy, settings, changed.status, spec=spec).units[0]) == (0, None)
    # But once the scheduler found no node for it, the GPU counted free is not there (another namespace's pod holds
    # it: a namespaced operator does not see it), and the rollout goes in place rather than wait for good.
    taken = replace(roomy, pods=facts.pods + (PodFact("new-0", facts.pods[0].target, template, unschedulable=True),))
    assert _strategy(plan(taken, settings, changed.status, spec=spec).units[0]) == (1, "true")
