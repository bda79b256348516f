"""An architecture whose serving pods find no node is full, whatever its free GPUs as counted say.

The count sees only the GPU pods the operator watches: a namespaced operator (the chart's namespaced mode) sees no
other namespace's, so a type full of other teams' pods counted as free, its units' pods stayed Pending for good and
capacity never went to a type with room (the control-plane bench at N=1000 with the floor's pods kept: 997 of 1000
objects Pending on a full H100 pool beside 800 free A100 GPUs). The scheduler's verdict corrects the count: the
pod's own unit (now) and, for a while, every unit of its architecture in its namespace (``full_targets``)."""
from __future__ import annotations

from dataclasses import replace

from trtop import names
from trtop.config import Settings
from trtop.planning.facts import ClusterFacts, ObjectFact, PodFact
from trtop.planning.plan import plan_model_deployment

from .conftest import gpu_node, live_of, md_body, record_for

NOW = "2026-12-02T00:00:00Z"
SPEC = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"}, "replicas": 2, "scaling": {"mode": "none"}}
# As a namespaced operator counts them: every GPU free (other namespaces' pods hold the H100s).
NODES = (gpu_node("h100-0", "h100", gpus=8), gpu_node("a100-0", "a100", gpus=8))


def facts_with_records(settings: Settings) -> ClusterFacts:
    first = plan_model_deployment(md_body(SPEC), ClusterFacts(nodes=NODES), settings, now=NOW)
    return ClusterFacts(nodes=NODES, records={e.key: record_for(e) for e in first.engines})


def replicas(p) -> dict[str, int]:
    return {u["metadata"]["labels"]["trtop.io/target"]: u["spec"]["replicas"] for u in p.units}


def live(facts: ClusterFacts, p, *, ready: bool) -> ClusterFacts:
    """The cluster once ``p`` is applied: its units and their pods (ready or not), its Service."""
    units, pods = live_of(p, ready=ready)
    return replace(facts, units=units, pods=pods,
                   service=ObjectFact(applied_hash=p.service["metadata"]["annotations"][names.ANNOTATION_APPLIED_HASH]))


def stuck(pods: tuple[PodFact, ...], slug: str) -> tuple[PodFact, ...]:
    """The pods of ``slug``'s unit as the scheduler left them: no node for any."""
    return tuple(replace(p, ready=False, unschedulable=True) if p.target == slug else p for p in pods)


def test_pods_that_find_no_node_move_to_a_type_with_room_and_stay_there(settings):
    facts = facts_with_records(settings)
    p = plan_model_deployment(md_body(SPEC), facts, settings, now=NOW)
    h100 = next(s for s in replicas(p) if s.startswith("sm90"))
    a100 = next(s for s in replicas(p) if s.startswith("sm80"))
    assert replicas(p) == {h100: 2, a100: 0}  # the fastest type, its GPUs counted free
    facts = live(facts, p, ready=False)
    facts = replace(facts, pods=stuck(facts.pods, h100))
    moved = plan_model_deployment(md_body(SPEC, status=p.status), facts, settings, now=NOW)
    assert replicas(moved) == {h100: 0, a100: 2}  # the old code put them back on the H100s: Pending for good
    # The H100 pods are gone, and the A100 ones found nodes: they stay (while the H100s count as full, and after).
    facts = live(facts, moved, ready=True)
    for full in (frozenset({h100}), frozenset()):
        again = plan_model_deployment(md_body(SPEC, status=moved.status), replace(facts, full_targets=full),
                                      settings, now=NOW)
        assert replicas(again) == {h100: 0, a100: 2} and again.to_apply == ()


def test_a_type_another_unit_found_full_gets_no_new_pods_until_it_has_room_again(settings):
    facts = facts_with_records(settings)
    h100 = "sm90-nvidia-h100-80gb-hbm3"
    p = plan_model_deployment(md_body(SPEC), replace(facts, full_targets=frozenset({h100})), settings, now=NOW)
    assert replicas(p)[h100] == 0 and sum(replicas(p).values()) == 2
    p = plan_model_deployment(md_body(SPEC), facts, settings, now=NOW)
    assert replicas(p)[h100] == 2


def test_when_every_type_is_full_the_pods_wait_where_they_are_and_say_so(settings):
    """No ping-pong between full types: the most preferred unit keeps the capacity (Pending pods) and the status
    says the replicas wait for GPUs."""
    facts = facts_with_records(settings)
    p = plan_model_deployment(md_body(SPEC), facts, settings, now=NOW)
    facts = live(facts, p, ready=False)
    every = frozenset(replicas(p))
    facts = replace(facts, pods=stuck(facts.pods, "sm90-nvidia-h100-80gb-hbm3"), full_targets=every)
    first = plan_model_deployment(md_body(SPEC, status=p.status), facts, settings, now=NOW)
    assert replicas(first) == replicas(p) and first.to_apply == ()
    limited = next(c for c in first.status["conditions"] if c["type"] == "ScalingLimited")
    assert limited["status"] == "True" and "wait for free GPUs" in limited["message"]
