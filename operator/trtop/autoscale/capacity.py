"""How much serving the cluster's GPUs can host: the GPU cap of ``decide``.

Pure. The operator's autoscale timer calls ``throughput_capacity`` with the node facts it
already gathers (trtop.planning.facts.NodeFact) and the serving units (architecture,
capacity units per pod, replicas), and passes the result as
``Observation.schedulable_capacity``: a throughput cap per architecture (its free GPUs
times what one of its pods carries), in the capacity units the replicas count.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from trtop.api.targets import Target
from trtop.planning.facts import NodeFact
from trtop.planning.targets import nodes_for_target


def schedulable_capacity(nodes: Iterable[NodeFact], *, eligible: Callable[[NodeFact], bool],
                         gpus_per_replica: int, running_replicas: int) -> int | None:
    """Replicas that fit: whole replicas per node in the free ``nvidia.com/gpu`` (allocatable
    minus requested) of schedulable, eligible nodes, plus the replicas already running (their
    GPUs are in "requested"). None when replicas need no GPU (no cap)."""
    if gpus_per_replica <= 0:
        return None
    free_slots = sum(max(0, n.gpu_allocatable - n.gpu_requested) // gpus_per_replica
                     for n in nodes if n.schedulable and eligible(n))
    return free_slots + max(0, running_replicas)


def throughput_capacity(nodes: Iterable[NodeFact], units: Iterable[tuple[Target, float, int]], *,
                        gpus_per_replica: int, full: frozenset[str] = frozenset()) -> int | None:
    """Capacity units the serving units can reach: per unit, (its replicas + the pods its
    architecture's free GPUs can host) x the capacity units one of its pods carries. None when
    replicas need no GPU (no cap). ``full``: architectures (unit labels) where the scheduler lately found no node
    for a serving pod: no room, whatever the free GPUs counted (the placement's rule, trtop.planning.units)."""
    if gpus_per_replica <= 0:
        return None
    nodes = tuple(nodes)
    total = 0.0
    for target, per_pod, replicas in units:
        eligible = set() if target.slug in full else {n.name for n in nodes_for_target(target, nodes)}
        pods = schedulable_capacity(nodes, eligible=lambda n: n.name in eligible, gpus_per_replica=gpus_per_replica,
                                    running_replicas=replicas)
        total += (pods or 0) * max(per_pod, 0.0)
    return math.floor(total + 1e-6)
