"""Cluster shapes and ModelDeployment bodies for planner tests (plain data, no cluster)."""
from __future__ import annotations

import pytest

from trtop import names
from trtop.api.engine import EngineRecord, TensorSpec
from trtop.config import Settings
from trtop.planning.facts import DeploymentFact, NodeFact, PodFact

GPU_TYPES = {
    "h100": ("9", "0", "NVIDIA-H100-80GB-HBM3", "hopper"),
    "a100": ("8", "0", "NVIDIA-A100-SXM4-80GB", "ampere"),
    "l4": ("8", "9", "NVIDIA-L4", "ada-lovelace"),
    "b200": ("10", "0", "NVIDIA-B200", "blackwell"),
}


def gpu_node(name: str, kind: str, gpus: int = 8, requested: int = 0, schedulable: bool = True) -> NodeFact:
    major, minor, product, family = GPU_TYPES[kind]
    return NodeFact(name, {names.GFD_CC_MAJOR: major, names.GFD_CC_MINOR: minor, names.GFD_PRODUCT: product,
                           names.GFD_FAMILY: family, "kubernetes.io/hostname": name},
                    schedulable, gpus, requested)


def cpu_node(name: str) -> NodeFact:
    return NodeFact(name, {"kubernetes.io/hostname": name})


def md_body(spec: dict | None = None, generation: int = 1, status: dict | None = None) -> dict:
    return {
        "apiVersion": names.API_VERSION, "kind": names.KIND,
        "metadata": {"name": "resnet", "namespace": "ml", "uid": "uid-1", "generation": generation},
        "spec": spec or {"model": {"uri": "s3://models/resnet", "format": "savedmodel"}},
        "status": status or {},
    }


def record_for(engine) -> EngineRecord:
    return EngineRecord(key=engine.key, target=engine.target, backend=engine.request.backend,
                        artifact="model.plan" if engine.request.backend == "tensorrt" else "model.onnx",
                        precision="fp32", batch=engine.request.batch,
                        inputs=(TensorSpec("x", "float32", (-1, 4)),), outputs=(TensorSpec("y", "float32", (-1, 2)),),
                        model_digest="sha256:00", versions={}, parity={"max_abs_error": 1e-6},
                        benchmark={"batch_opt": {"p50_ms": 1.0, "p99_ms": 2.0, "throughput": 100.0}},
                        build_seconds=42.0, sha256=engine.key[2:] * 4, size=1234)


def live_of(plan, *, ready: bool = True, replicas: dict | None = None):
    """(unit facts, pod facts) as the cluster shows them once ``plan``'s units are applied
    (pods ready or not; ``replicas`` by unit name overrides how many pods a unit has)."""
    units, pods = [], []
    for m in plan.units:
        name, ann, labels = m["metadata"]["name"], m["metadata"]["annotations"], m["metadata"]["labels"]
        n = (replicas or {}).get(name, m["spec"]["replicas"])
        units.append(DeploymentFact(
            name, ann[names.ANNOTATION_ENGINE_SET], ann[names.ANNOTATION_SPEC_HASH], n, n if ready else 0, n, ready,
            tuple(ann[names.ANNOTATION_ENGINE_KEYS].split(",")), applied_hash=ann[names.ANNOTATION_APPLIED_HASH],
            target=labels[names.LABEL_TARGET], template_hash=ann[names.ANNOTATION_TEMPLATE_HASH], uid=f"uid-{name}"))
        pods += [PodFact(f"{name}-{i}", labels[names.LABEL_TARGET], ann[names.ANNOTATION_TEMPLATE_HASH], ready)
                 for i in range(n)]
    return tuple(units), tuple(pods)


@pytest.fixture
def settings() -> Settings:
    return Settings(store_uri="/tmp/store", tensorrt_version="10.13.0")


@pytest.fixture
def mixed_cluster() -> tuple[NodeFact, ...]:
    return (gpu_node("h100-0", "h100"), gpu_node("h100-1", "h100"), gpu_node("a100-0", "a100"),
            gpu_node("a100-1", "a100"), gpu_node("l4-0", "l4", gpus=1), cpu_node("cpu-0"), cpu_node("cpu-1"))
