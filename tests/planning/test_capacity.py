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
