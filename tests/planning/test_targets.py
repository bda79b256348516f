"""Target discovery follows the cluster: GPU types present, selectors, cordons, explicit lists."""
from trtop.api.spec import parse_spec
from trtop.api.targets import Target
from trtop.planning.targets import discover_targets, nodes_for_target

from .conftest import cpu_node, gpu_node

SPEC = {"model": {"uri": "s3://m/x"}}


def test_auto_finds_one_target_per_gpu_type(mixed_cluster):
    targets = discover_targets(parse_spec(SPEC), mixed_cluster)
    assert [str(t) for t in targets] == ["8.0/NVIDIA-A100-SXM4-80GB", "8.9/NVIDIA-L4", "9.0/NVIDIA-H100-80GB-HBM3"]


def test_portable_engines_key_on_compute_capability_only(mixed_cluster):
    spec = parse_spec({**SPEC, "engine": {"hardwareCompatibility": "same-compute-capability"}})
    assert discover_targets(spec, mixed_cluster) == (Target("8.0"), Target("8.9"), Target("9.0"))


def test_cordoned_nodes_and_gpu_less_capacity_do_not_count():
    nodes = (gpu_node("h", "h100", schedulable=False), gpu_node("l", "l4", gpus=0), cpu_node("c"))
    assert discover_targets(parse_spec(SPEC), nodes) == ()


def test_serving_node_selector_limits_discovery(mixed_cluster):
    spec = parse_spec({**SPEC, "serving": {"nodeSelector": {"kubernetes.io/hostname": "l4-0"}}})
    assert discover_targets(spec, mixed_cluster) == (Target("8.9", "NVIDIA-L4"),)


def test_explicit_targets_without_auto(mixed_cluster):
    spec = parse_spec({**SPEC, "engine": {"targets": ["cpu"]}})
    assert discover_targets(spec, mixed_cluster) == (Target("cpu"),)
    assert [n.name for n in nodes_for_target(Target("cpu"), mixed_cluster)] == ["cpu-0", "cpu-1"]


def test_new_gpu_type_joining_adds_exactly_one_target(mixed_cluster):
    before = discover_targets(parse_spec(SPEC), mixed_cluster[:4])
    after = discover_targets(parse_spec(SPEC), mixed_cluster)
    assert set(after) - set(before) == {Target("8.9", "NVIDIA-L4")}


def _admits(labels, manifest):
    spec = manifest["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return any(all(labels.get(e["key"]) in e["values"] for e in t["matchExpressions"] if e["operator"] == "In")
               for t in terms)


def test_mig_slices_count_only_for_engines_of_a_compute_capability(settings):
    """A node in MIG single mode says ``gpu.product`` ``<product>-MIG-<profile>``: a product's build and serving pods
    admit only ``<product>`` and ``<product>-SHARED``, so such a node gave a build Job that could never schedule and
    free GPUs no pod could take. Now it counts only where pods select on the compute capability alone."""
    from trtop import names
    from trtop.planning.facts import ClusterFacts, NodeFact
    from trtop.planning.plan import plan_model_deployment

    from .conftest import md_body
    mig = NodeFact("a100-mig", {names.GFD_CC_MAJOR: "8", names.GFD_CC_MINOR: "0",
                                names.GFD_PRODUCT: "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}, True, 7, 0)
    alone = plan_model_deployment(md_body(), ClusterFacts(nodes=(mig,)), settings, now="x")
    assert alone.targets == () and alone.jobs_to_create == ()
    ready = next(c for c in alone.status["conditions"] if c["type"] == names.COND_ENGINES_READY)
    assert ready["reason"] == "NoTargets" and "MIG slices" in ready["message"]
    spec = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"},
            "engine": {"hardwareCompatibility": "same-compute-capability"}}
    by_cc = plan_model_deployment(md_body(spec), ClusterFacts(nodes=(mig,)), settings, now="x")
    assert [str(t) for t in by_cc.targets] == ["8.0"] and len(by_cc.jobs_to_create) == 1
    assert _admits(mig.labels, by_cc.jobs_to_create[0])


def test_no_targets_says_why_the_gpu_nodes_that_match_gave_none(settings):
    """A cluster with GFD-labelled GPU nodes that yield no target was told to add GPU nodes with GFD labels: the
    status now names what those nodes lack (MIG's mixed strategy, no device plugin, MIG slices for a product's
    engine), counting only schedulable nodes that match serving.nodeSelector."""
    from trtop import names
    from trtop.planning.facts import ClusterFacts, NodeFact
    from trtop.planning.plan import plan_model_deployment

    from .conftest import md_body
    a100 = {names.GFD_CC_MAJOR: "8", names.GFD_CC_MINOR: "0", names.GFD_PRODUCT: "NVIDIA-A100-SXM4-40GB"}
    mixed = NodeFact("mixed-0", {**a100, names.GFD_MIG_STRATEGY: "mixed"}, True, 0, 0)
    unplugged = NodeFact("bare-0", dict(a100), True, 0, 0)
    cordoned = NodeFact("bare-1", dict(a100), False, 0, 0)
    slices = NodeFact("mig-0", {**a100, names.GFD_PRODUCT: "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}, True, 7, 0)
    cpu = NodeFact("cpu-0", {}, True, 0, 0)

    def message(nodes, spec=None):
        plan = plan_model_deployment(md_body(spec) if spec else md_body(), ClusterFacts(nodes=tuple(nodes)), settings,
                                     now="x")
        assert plan.targets == () and plan.jobs_to_create == ()
        cond = next(c for c in plan.status["conditions"] if c["type"] == names.COND_ENGINES_READY)
        assert cond["reason"] == "NoTargets"
        return cond["message"]

    said = message([mixed, unplugged, cordoned, slices, cpu])
    assert "of the GPU nodes that match, 1 under MIG's mixed strategy" in said
    assert f"1 offer no allocatable {names.GPU_RESOURCE} (is NVIDIA's device plugin running there?)" in said
    assert "1 hold MIG slices" in said and "same-compute-capability" in said
    assert "of the GPU nodes that match" not in message([cpu])  # no GPU node: the plain advice alone
    elsewhere = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"},
                 "serving": {"nodeSelector": {"pool": "inference"}}}
    assert "of the GPU nodes that match" not in message([mixed, unplugged], elsewhere)  # they do not match
    by_cc = {"model": {"uri": "s3://models/resnet", "format": "savedmodel"},
             "engine": {"hardwareCompatibility": "same-compute-capability"}}
    assert "MIG slices (single" not in message([mixed], by_cc)  # slices are not the reason where they count
