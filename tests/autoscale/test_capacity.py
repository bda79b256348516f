"""schedulable_capacity: whole replicas per node, only on eligible schedulable nodes."""
from __future__ import annotations

from trtop.autoscale.capacity import schedulable_capacity
from trtop.planning.facts import NodeFact

NODES = (
    NodeFact("h100-0", {"arch": "9.0"}, True, gpu_allocatable=8, gpu_requested=3),   # 5 free
    NodeFact("h100-1", {"arch": "9.0"}, True, gpu_allocatable=8, gpu_requested=8),   # full
    NodeFact("h100-2", {"arch": "9.0"}, False, gpu_allocatable=8, gpu_requested=0),  # cordoned
    NodeFact("l4-0", {"arch": "8.9"}, True, gpu_allocatable=4, gpu_requested=0),     # no engine
)


def on_h100(n: NodeFact) -> bool:
    return n.labels["arch"] == "9.0"


def test_counts_free_gpus_on_eligible_schedulable_nodes_plus_running() -> None:
    assert schedulable_capacity(NODES, eligible=on_h100, gpus_per_replica=1, running_replicas=3) == 8


def test_a_replica_must_fit_on_one_node() -> None:
    nodes = NODES + (NodeFact("h100-3", {"arch": "9.0"}, True, gpu_allocatable=8, gpu_requested=7),)
    assert schedulable_capacity(nodes, eligible=on_h100, gpus_per_replica=2, running_replicas=0) == 2


def test_more_engines_more_capacity_and_cpu_serving_is_uncapped() -> None:
    assert schedulable_capacity(NODES, eligible=lambda n: True, gpus_per_replica=1, running_replicas=0) == 9
    assert schedulable_capacity(NODES, eligible=on_h100, gpus_per_replica=0, running_replicas=2) is None
