"""The capacity split: replicas in capacity units over serving units, by throughput, free GPUs and preference."""
from __future__ import annotations

from dataclasses import replace

import pytest

from trtop.api.targets import Target
from trtop.planning.capacity import (
    Slot, capacity_ceiling, engine_throughput, placement_order, preference_rank, split_replicas,
)

from .conftest import record_for

H100, A100, L4, B200 = Target("9.0"), Target("8.0"), Target("8.9"), Target("10.0")


def slot(target, speed=1.0, current=0, room=8, rank=0):
    return Slot(target, speed, current, room, rank)


def test_fills_the_fastest_architecture_that_has_room_first():
    s = split_replicas(3, [slot(L4, 1 / 3), slot(H100, 1.0, room=1), slot(A100, 0.5)])
    # H100 takes what it can (1 pod = 1 unit), then A100 (2 pods = 1 unit each 0.5), nothing on L4.
    assert s.replicas == {H100: 1, A100: 4, L4: 0} and s.short == 0


def test_equal_speeds_go_to_the_newest_architecture():
    assert split_replicas(2, [slot(A100), slot(H100), slot(L4)]).replicas == {A100: 0, H100: 2, L4: 0}
    assert [s.target for s in placement_order([slot(A100), slot(B200), slot(L4)])] == [B200, L4, A100]


def test_live_pods_stay_while_the_asked_capacity_is_met():
    """A faster architecture joining moves nobody; only more (or less) capacity changes counts."""
    live = [slot(L4, 1.0, current=2), slot(H100, 1.0, current=1)]
    assert split_replicas(3, [*live, slot(B200, 2.0)]).replicas == {L4: 2, H100: 1, B200: 0}
    more = split_replicas(5, [*live, slot(B200, 2.0)]).replicas
    assert more == {L4: 2, H100: 1, B200: 1}  # the new capacity goes to the fastest with room


def test_less_capacity_comes_from_the_least_preferred_first():
    live = [slot(L4, 0.5, current=4), slot(H100, 1.0, current=2)]
    assert split_replicas(3, live).replicas == {L4: 2, H100: 2}
    assert split_replicas(0, live).replicas == {L4: 0, H100: 0}


def test_no_room_anywhere_the_rest_waits_on_the_preferred_unit_and_is_said():
    s = split_replicas(4, [slot(H100, 1.0, room=1), slot(L4, 0.5, room=0)])
    assert s.replicas == {H100: 4, L4: 0} and s.short == 3


def test_cpu_units_have_no_gpu_room_limit():
    assert split_replicas(5, [Slot(Target("cpu"), 1.0, 0, None)]).replicas == {Target("cpu"): 5}
    assert capacity_ceiling([Slot(Target("cpu"), 1.0, 0, None)]) is None
    assert capacity_ceiling([slot(H100, 1.0, current=2, room=3), slot(L4, 0.5, room=4)]) == 7


def test_a_preference_list_orders_placement_before_speed():
    assert preference_rank(L4, ["NVIDIA-L4", "9.0"], products=["NVIDIA-L4"]) == 0
    assert preference_rank(H100, ["NVIDIA-L4", "9.0"]) == 1
    assert preference_rank(A100, ["NVIDIA-L4", "9.0"]) == 2
    assert preference_rank(Target("8.9", "NVIDIA-L4"), ["nvidia-l4-SHARED"]) == 0
    s = split_replicas(2, [slot(H100, 1.0, rank=1), slot(L4, 0.25, rank=0)])
    assert s.replicas == {H100: 0, L4: 8}


@pytest.mark.parametrize("bench,expected", [
    ({"batch_opt": {"throughput": 250.0}, "batch_max": {"throughput": 900.0}}, 250.0),
    ({"batch_max": {"throughput": 900.0}}, 900.0),
    ({"batch_opt": {"p50_ms": 1.0}}, None),
    ({"batch_opt": {"throughput": 0.0}}, None),
    ({}, None),
])
def test_throughput_comes_from_the_records_benchmark(bench, expected, settings, mixed_cluster):
    from trtop.planning.facts import ClusterFacts
    from trtop.planning.plan import plan_model_deployment

    from .conftest import md_body
    engine = plan_model_deployment(md_body(), ClusterFacts(nodes=mixed_cluster), settings, now="x").engines[0]
    assert engine_throughput(replace(record_for(engine), benchmark=bench)) == expected
    assert engine_throughput(None) is None


def _split_one_pod_at_a_time(desired, slots):
    """The split as it was written before its loops went in bulk: one pod per round (the reference)."""
    import math
    counts = {s.target: max(0, s.current) for s in slots}
    order = placement_order(slots)
    desired = max(0.0, desired)
    room = {s.target: s.room for s in slots}
    short = 0.0

    def total():
        return sum(counts[s.target] * s.speed for s in slots)

    while total() < desired - 1e-6:
        slot = next((s for s in order if room[s.target] is None or (room[s.target] or 0) > 0), None)
        if slot is None:
            slot = order[0]
            missing = desired - total()
            counts[slot.target] += max(1, math.ceil(missing / slot.speed - 1e-6))
            short += missing
            break
        counts[slot.target] += 1
        room[slot.target] = None if room[slot.target] is None else room[slot.target] - 1
    for slot in reversed(order):
        while counts[slot.target] > 0 and total() - slot.speed >= desired - 1e-6:
            counts[slot.target] -= 1
    return counts, round(short, 3)


def test_pods_added_and_taken_in_bulk_are_what_one_at_a_time_gave():
    import random
    rng = random.Random(15)
    speeds = [1.0, 0.5, 1 / 3, 2.0, 0.25, 1.5, 0.7, 3.0]
    for _ in range(3000):
        targets = rng.sample([H100, A100, L4, B200, Target("cpu")], rng.randint(1, 4))
        slots = [Slot(t, rng.choice(speeds), rng.randint(0, 6), None if t.cc == "cpu" else rng.randint(0, 5),
                      rng.randint(0, 2)) for t in targets]
        desired = rng.choice([0, 0.5, 1, 2, 3, 4.5, 7, 12, 30])
        s = split_replicas(desired, slots)
        assert (dict(s.replicas), s.short) == _split_one_pod_at_a_time(desired, slots), (desired, slots)


@pytest.mark.parametrize("throughput", [5e-324, 1e-20, 1e300])
def test_a_records_throughput_past_any_gpus_is_bounded_and_the_plan_comes_back(throughput, settings):
    """A build pod writes the record's benchmark (the tenant's model runs there): 5e-324 samples/s divided the split
    by zero, and 1e-20 added pods one at a time for ~1e17 rounds, the object's lock held and the autoscaler behind
    it. Now a unit's pod counts between MIN_SPEED and MAX_SPEED replicas, and the plan comes back at once."""
    import time

    from trtop.planning.capacity import MAX_SPEED, MIN_SPEED
    from trtop.planning.facts import ClusterFacts
    from trtop.planning.plan import plan_model_deployment

    from .conftest import gpu_node, md_body
    spec = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"}, "replicas": 4, "scaling": {"mode": "none"}}
    prefer = replace(settings, placement_preference=("NVIDIA-L4",))
    nodes = (gpu_node("h100-0", "h100", gpus=1, requested=1), gpu_node("l4-0", "l4", gpus=1, requested=1))
    first = plan_model_deployment(md_body(spec), ClusterFacts(nodes=nodes), prefer, now="x")
    records = {e.key: replace(record_for(e), benchmark={"batch_opt": {"throughput": throughput if e.target.cc == "8.9"
                                                                      else 1000.0}}) for e in first.engines}
    started = time.monotonic()
    plan = plan_model_deployment(md_body(spec), ClusterFacts(nodes=nodes, records=records), prefer, now="x")
    assert time.monotonic() - started < 5
    pods = {u["metadata"]["name"]: u["spec"]["replicas"] for u in plan.units}
    l4 = next(n for n in pods if "nvidia-l4" in n)
    # every GPU is taken: the preferred L4 unit holds what is asked, each pod counting at least MIN_SPEED replicas
    assert 0 < pods[l4] <= 4 / MIN_SPEED and sum(pods.values()) >= 1
    assert MIN_SPEED < 1 < MAX_SPEED
