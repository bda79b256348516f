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


def test_throughput_cap_is_free_gpus_times_what_a_pod_carries_per_architecture() -> None:
    from trtop.api.targets import Target
    from trtop.autoscale.capacity import throughput_capacity

    gfd = {"h100": ("9", "0"), "l4": ("8", "9")}

    def node(name: str, kind: str, gpus: int, used: int) -> NodeFact:
        major, minor = gfd[kind]
        return NodeFact(name, {"nvidia.com/gpu.compute.major": major, "nvidia.com/gpu.compute.minor": minor},
                        True, gpu_allocatable=gpus, gpu_requested=used)

    nodes = (node("h100-0", "h100", 8, 6), node("l4-0", "l4", 4, 1))
    units = [(Target("9.0"), 1.0, 6), (Target("8.9"), 0.25, 1)]
    # H100: (6 running + 2 free) x 1.0 = 8; L4: (1 + 3) x 0.25 = 1 -> 9 capacity units.
    assert throughput_capacity(nodes, units, gpus_per_replica=1) == 9
    assert throughput_capacity(nodes, units[:1], gpus_per_replica=1) == 8
    assert throughput_capacity(nodes, units, gpus_per_replica=0) is None
    # The scheduler found no node for an H100 pod lately: the 2 GPUs counted free are not there (another
    # namespace's pods hold them), so the H100 unit reaches its 6 running replicas only: 6 + 1 = 7.
    assert throughput_capacity(nodes, units, gpus_per_replica=1, full=frozenset({Target("9.0").slug})) == 7
