"""Target discovery: which architectures a ModelDeployment needs engines for.

From schedulable nodes that match the serving nodeSelector, keyed on GFD
``gpu.compute.major/minor`` (+ product when hardware compatibility is ``none``),
never on ``gpu.family``; plus the spec's explicit targets.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace

from trtop import names
from trtop.api.spec import ModelDeploymentSpec
from trtop.api.targets import Target, gpu_target_of_node, is_mig_slice
from trtop.planning.facts import NodeFact


def node_matches_selector(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def discover_targets(spec: ModelDeploymentSpec, nodes: Iterable[NodeFact]) -> tuple[Target, ...]:
    """Sorted, de-duplicated targets: explicit ones, plus (when ``auto``) every GPU type present."""
    found: set[Target] = set(spec.engine.targets)
    if spec.engine.auto_targets:
        with_product = spec.engine.hardware_compatibility == "none"
        for node in _matching_gpu_nodes(spec, nodes):
            target = gpu_target_of_node(node.labels, with_product=with_product)
            if target is not None and not _why_not_served(node, with_product):
                found.add(target)
    return tuple(sorted(found))


def _matching_gpu_nodes(spec: ModelDeploymentSpec, nodes: Iterable[NodeFact]) -> Iterable[NodeFact]:
    """Schedulable nodes that match ``serving.nodeSelector`` and carry GFD's GPU labels."""
    return (n for n in nodes if n.schedulable and node_matches_selector(n.labels, spec.serving.node_selector)
            and gpu_target_of_node(n.labels, with_product=False) is not None)


def _why_not_served(node: NodeFact, with_product: bool) -> str:
    """Why a matching GPU node gives no target ("" when it gives one): one rule for discover_targets and for
    the NoTargets message that explains it."""
    if node.gpu_allocatable <= 0:
        return "mixed" if node.labels.get(names.GFD_MIG_STRATEGY, "").strip() == "mixed" else "unplugged"
    return "slices" if with_product and is_mig_slice(node.labels) else ""


def why_no_gpu_node_is_a_target(spec: ModelDeploymentSpec, nodes: Iterable[NodeFact]) -> str:
    """For a NoTargets status: the schedulable nodes that match the spec and carry GFD's GPU labels, yet gave
    ``discover_targets`` no target, and why ("" when there is none). Without it the status asks for GPU nodes
    with GFD labels on a cluster that has them, and the person has nothing to act on."""
    if not spec.engine.auto_targets:
        return ""
    with_product = spec.engine.hardware_compatibility == "none"
    causes = Counter(_why_not_served(node, with_product) for node in _matching_gpu_nodes(spec, nodes))
    mixed, unplugged, slices = causes["mixed"], causes["unplugged"], causes["slices"]
    why = []
    if mixed:
        why.append(f"{mixed} under MIG's mixed strategy offer their GPUs only as nvidia.com/mig-<profile> devices, "
                   f"and trtop's pods take whole GPUs ({names.GPU_RESOURCE}): give the pool whole GPUs or the "
                   "single strategy")
    if unplugged:
        why.append(f"{unplugged} offer no allocatable {names.GPU_RESOURCE} (is NVIDIA's device plugin running "
                   "there?)")
    if slices:
        why.append(f"{slices} hold MIG slices (single strategy), which only engines of a compute capability use: "
                   "set engine.hardwareCompatibility to same-compute-capability")
    return f"of the GPU nodes that match, {'; '.join(why)}" if why else ""


def nodes_for_target(target: Target, nodes: Iterable[NodeFact]) -> list[NodeFact]:
    """Schedulable nodes an engine for ``target`` can be built or served on."""
    out = []
    for node in nodes:
        if not node.schedulable:
            continue
        gpu = gpu_target_of_node(node.labels, with_product=target.product is not None)
        if target.product is not None and is_mig_slice(node.labels):
            continue  # no pod of a product's unit is admitted there (is_mig_slice)
        if target.is_cpu:
            if gpu is None:
                out.append(node)
        elif gpu is not None and gpu == target and node.gpu_allocatable > 0:
            out.append(node)
    return out


def with_grace(nodes: Iterable[NodeFact], now: float, grace_seconds: float) -> tuple[NodeFact, ...]:
    """Nodes NotReady or cordoned for less than ``grace_seconds`` count as schedulable again.

    So a node's brief outage (or a cordon for a reboot) neither drops its target from
    serving nor rolls the pods twice (once when it leaves, once when it returns).
    """
    def back(node: NodeFact) -> NodeFact:
        if node.schedulable or node.down_since is None or now <= 0 or now - node.down_since >= grace_seconds:
            return node
        return replace(node, schedulable=True)
    return tuple(back(n) for n in nodes)
