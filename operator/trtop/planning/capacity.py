"""Replicas split over serving units by verified throughput and free GPUs (pure).

The ModelDeployment's one knob (``spec.replicas``, or the builtin autoscaler's decision)
counts **capacity units**: one unit is the throughput of one replica of the reference
engine (``status.capacityUnit``: the fastest served engine's benchmark, kept while the
model revision stays, so a faster architecture joining never changes what "3 replicas"
means). A unit whose engine does twice the reference throughput counts 2 per pod.

``split_replicas`` is sticky: live pods stay where they are as long as the capacity asked
for is met (an architecture joining moves nobody); more capacity goes to the preferred
architecture that has free GPUs (default: the fastest), less capacity comes first from
the least preferred. Called by the planner (``trtop.planning.plan``) and, for the GPU
cap in capacity units, by the builtin autoscaler's shell.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trtop.api.engine import EngineRecord
from trtop.api.targets import Target, normalize_product

_EPSILON = 1e-6


def engine_throughput(record: EngineRecord | None) -> float | None:
    """Samples per second of the record's benchmark at the opt batch (else the best measured), or None."""
    if record is None:
        return None
    bench = record.benchmark
    opt = bench.get("batch_opt")
    if isinstance(opt, Mapping) and _positive(opt.get("throughput")):
        return float(opt["throughput"])
    found = [float(d["throughput"]) for d in bench.values() if isinstance(d, Mapping) and _positive(d.get("throughput"))]
    return max(found) if found else None


# A unit's pods count between these many capacity units: speeds come from benchmark figures in engine records,
# which the build pod (the tenant's model code runs there) writes. 5e-324 samples/s divided the split by zero,
# and 1e-20 made it add pods one at a time for ~1e17 rounds with the object's lock held (and the autoscaler's loop
# behind it). One model's throughput differs by far less between GPU architectures (a T4 to an H100: ~7x), and a
# CPU unit beside a GPU one stays within this too (~50x for ResNet-50); past it a record could make one replica of
# the ModelDeployment ask for thousands of pods.
MIN_SPEED, MAX_SPEED = 1 / 128, 128.0


def bounded_speed(speed: float) -> float:
    return min(MAX_SPEED, max(MIN_SPEED, speed))


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class Slot:
    """One serving unit as the split sees it."""

    target: Target
    speed: float  # capacity units one pod carries (its throughput / the reference throughput)
    current: int  # pods the live unit has now (0 for a unit not created yet)
    room: int | None  # pods more that its architecture's free GPUs can host; None: no GPU needed
    rank: int = 0  # placement preference: lower first (the operator's per-product order)


@dataclass(frozen=True)
class Split:
    replicas: Mapping[Target, int]
    short: float = 0.0  # capacity units placed on pods that no free GPU can host yet (they stay Pending)

    def capacity(self, slots: Sequence[Slot]) -> float:
        return sum(self.replicas.get(s.target, 0) * s.speed for s in slots)


def placement_order(slots: Sequence[Slot]) -> list[Slot]:
    """Where capacity goes first: preference rank, then the fastest, then the newest architecture."""
    return sorted(slots, key=lambda s: (s.rank, -s.speed, _neg(s.target)))


def _neg(target: Target) -> tuple[float, str]:
    try:
        cc = -float(target.cc)
    except ValueError:  # cpu
        cc = 0.0
    return (cc, target.product or "")


def split_replicas(desired: float, slots: Sequence[Slot]) -> Split:
    """Pods per unit carrying ``desired`` capacity units; see the module docstring for the policy."""
    counts = {s.target: max(0, s.current) for s in slots}
    if not slots:
        return Split({})
    order = placement_order(slots)
    desired = max(0.0, desired)
    room = {s.target: s.room for s in slots}
    short = 0.0

    def total() -> float:
        return sum(counts[s.target] * s.speed for s in slots)

    # Pods are added and taken a unit at a time in bulk (what one at a time would reach): each round fills one
    # unit's room or meets the capacity, so a unit's speed (a tenant's record says it) bounds no loop's length.
    while total() < desired - _EPSILON:
        missing = desired - total()
        slot = next((s for s in order if room[s.target] is None or (room[s.target] or 0) > 0), None)
        if slot is None:  # no free GPU anywhere: the most preferred unit takes the rest (Pending pods)
            slot = order[0]
            counts[slot.target] += max(1, math.ceil(missing / slot.speed - _EPSILON))
            short += missing
            break
        left = room[slot.target]
        add = max(1, math.ceil(missing / slot.speed - _EPSILON))
        add = add if left is None else min(add, left)
        counts[slot.target] += add
        room[slot.target] = None if left is None else left - add
    for slot in reversed(order):  # less capacity: the least preferred units give first
        spare = (total() - (desired - _EPSILON)) / slot.speed
        counts[slot.target] -= max(0, min(counts[slot.target], math.floor(spare)))
        while counts[slot.target] > 0 and total() - slot.speed >= desired - _EPSILON:  # rounding's last pod
            counts[slot.target] -= 1
    return Split(counts, round(short, 3))


def capacity_ceiling(slots: Sequence[Slot]) -> float | None:
    """Capacity units the live pods plus every free GPU could carry; None when a unit needs no GPU."""
    if any(s.room is None for s in slots):
        return None
    return sum((s.current + (s.room or 0)) * s.speed for s in slots)


def preference_rank(target: Target, preference: Sequence[str], products: Sequence[str] = ()) -> int:
    """Index of the first entry naming ``target``: its CC (``9.0``), its target string, or a GPU
    product (``NVIDIA-L4``) of the target or of its nodes (``products``); unnamed targets come
    after all named ones."""
    names = {p.lower() for p in (*products, *([target.product] if target.product else []))}
    for i, entry in enumerate(preference):
        entry = entry.strip()
        if entry in (target.cc, str(target)) or normalize_product(entry).lower() in names:
            return i
    return len(preference)
