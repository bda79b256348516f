"""How many serving replicas the cluster's GPUs can host: the GPU cap of ``decide``.

Pure. The operator's autoscale timer calls ``schedulable_capacity`` with the node facts it
already gathers (trtop.planning.facts.NodeFact) and a predicate saying which nodes can serve
(an architecture with a ready engine), and passes the result as
``Observation.schedulable_capacity``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from trtop.planning.facts import NodeFact


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
