"""Fake node pools: parse a pools YAML file and build the Node manifests it describes (pure).

A pool is N identical nodes; a GPU pool carries the labels NVIDIA's GPU Feature Discovery
(GFD) puts on real nodes and advertises ``nvidia.com/gpu``. Called by ``trtop_dev.devcluster.nodes``
(applies them to the kwok cluster), ``trtop_dev.devcluster.kind`` (labels kind workers) and the
tests, which write their own pools to add or remove a GPU type at run time.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trtop import names

DEFAULT_POOLS_FILE = "pools.yaml"
DEFAULT_PODS = 110  # the kubelet's default --max-pods
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CC = re.compile(r"^([0-9]+)\.([0-9]+)$")
_POOL_FIELDS = {"name", "count", "cpu", "memory", "pods", "instanceType", "labels", "taints", "gpu"}
_GPU_FIELDS = {"product", "computeCapability", "count", "memoryMiB", "migCapable", "replicas",
               "driverVersion", "cudaVersion"}
_DEFAULT_FIELDS = {"driverVersion", "cudaVersion"}


class PoolsError(ValueError):
    """A pools file that cannot describe nodes; the message names the pool and field to fix."""


@dataclass(frozen=True)
class Gpu:
    """The GPUs of every node of one pool, as GFD would report them."""

    product: str  # NVML name with spaces as '-', e.g. NVIDIA-H100-80GB-HBM3
    compute_capability: str  # "9.0"
    count: int  # physical GPUs per node
    memory_mib: int = 0  # per GPU, MiB (GFD's nvidia.com/gpu.memory); 0 = no label
    mig_capable: bool = False
    replicas: int = 1  # > 1: time-slicing, as the device plugin advertises it
    driver_version: str = "580.159.04"
    cuda_version: str = "13.0"

    @property
    def cc_major(self) -> int:
        return int(self.compute_capability.split(".")[0])

    @property
    def cc_minor(self) -> int:
        return int(self.compute_capability.split(".")[1])

    @property
    def allocatable(self) -> int:
        """What the device plugin advertises as nvidia.com/gpu: GPUs times time-slicing replicas."""
        return self.count * self.replicas


@dataclass(frozen=True)
class Pool:
    """N identical fake nodes named ``<name>-<i>``."""

    name: str
    count: int
    cpu: str = "32"
    memory: str = "128Gi"
    pods: int = DEFAULT_PODS
    instance_type: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()
    gpu: Gpu | None = None

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]


def gpu_family(major: int, minor: int) -> str:
    """GFD's nvidia.com/gpu.family for a compute capability (k8s-device-plugin getArchFamily)."""
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ampere" if minor < 9 else "ada-lovelace"
    return {1: "tesla", 2: "fermi", 3: "kepler", 5: "maxwell", 6: "pascal", 9: "hopper",
            10: "blackwell", 12: "blackwell"}.get(major, "undefined")


def gfd_labels(gpu: Gpu) -> dict[str, str]:
    """The labels GPU Feature Discovery writes for ``gpu`` (without the timestamp / machine labels)."""
    shared = gpu.replicas > 1
    driver = gpu.driver_version.split(".")
    cuda_major, _, cuda_minor = gpu.cuda_version.partition(".")
    labels = {
        names.GFD_PRODUCT: gpu.product + ("-SHARED" if shared else ""),
        names.GFD_CC_MAJOR: str(gpu.cc_major),
        names.GFD_CC_MINOR: str(gpu.cc_minor),
        names.GFD_FAMILY: gpu_family(gpu.cc_major, gpu.cc_minor),
        names.GFD_COUNT: str(gpu.count),
        names.GFD_REPLICAS: str(gpu.replicas),
        names.GFD_SHARING_STRATEGY: "time-slicing" if shared else "none",
        names.GFD_MIG_CAPABLE: str(gpu.mig_capable).lower(),
        names.GFD_DRIVER_VERSION: gpu.driver_version,
        "nvidia.com/cuda.driver-version.major": driver[0],
        "nvidia.com/cuda.driver-version.minor": driver[1] if len(driver) > 1 else "",
        "nvidia.com/cuda.driver-version.revision": driver[2] if len(driver) > 2 else "",
        names.GFD_CUDA_RUNTIME_VERSION: gpu.cuda_version,
        "nvidia.com/cuda.runtime-version.major": cuda_major,
        "nvidia.com/cuda.runtime-version.minor": cuda_minor or "0",
        "nvidia.com/gpu.mode": "compute",
        "nvidia.com/mps.capable": "false",
        "nvidia.com/gpu.present": "true",  # set by the GPU operator's NFD rule
    }
    if gpu.memory_mib:
        labels[names.GFD_MEMORY] = str(gpu.memory_mib)
    return labels


def build_node(pool: Pool, index: int) -> dict[str, Any]:
    """The Node manifest (with status) of node ``index`` of ``pool``."""
    node_name = f"{pool.name}-{index}"
    labels = {
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        names.LABEL_DEV_POOL: pool.name,
    }
    if pool.instance_type:
        labels["node.kubernetes.io/instance-type"] = pool.instance_type
    if pool.gpu:
        labels.update(gfd_labels(pool.gpu))
    # kwok manages only nodes so annotated (kwokctl.yaml): the real node stays the kubelet's.
    annotations = {"node.alpha.kubernetes.io/ttl": "0", names.KWOK_NODE_ANNOTATION: "fake"}
    labels.update(pool.labels)
    resources_ = {"cpu": pool.cpu, "memory": pool.memory, "pods": str(pool.pods),
                  "ephemeral-storage": "1Ti"}
    if pool.gpu:
        resources_[names.GPU_RESOURCE] = str(pool.gpu.allocatable)
    spec: dict[str, Any] = {}
    if pool.taints:
        spec["taints"] = [dict(t) for t in pool.taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name, "labels": labels, "annotations": annotations},
        "spec": spec,
        "status": {"capacity": dict(resources_), "allocatable": dict(resources_)},
    }


def build_nodes(pools: Sequence[Pool]) -> list[dict[str, Any]]:
    """Every Node of every pool, in file order."""
    return [build_node(pool, i) for pool in pools for i in range(pool.count)]


def parse_pools(data: object, *, source: str = "pools file") -> list[Pool]:
    """Pools from the parsed YAML document ``{defaults: {...}, pools: [...]}``."""
    if not isinstance(data, Mapping) or not isinstance(data.get("pools"), list):
        raise PoolsError(f"{source}: expected a mapping with a 'pools' list (see docs/dev-cluster.md)")
    defaults = data.get("defaults") or {}
    _check_fields(defaults, _DEFAULT_FIELDS, f"{source}: defaults")
    pools = [_parse_pool(item, defaults, f"{source}: pools[{i}]") for i, item in enumerate(data["pools"])]
    seen: set[str] = set()
    for pool in pools:
        if pool.name in seen:
            raise PoolsError(f"{source}: pool name {pool.name!r} is used twice; node names would clash")
        seen.add(pool.name)
    return pools


def load_pools(text: str, *, source: str = "pools file") -> list[Pool]:
    """Pools from YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PoolsError(f"{source}: not valid YAML: {err}") from err
    return parse_pools(data, source=source)


def read_pools(path: Path | None = None) -> list[Pool]:
    """Pools from ``path``, or the default pools shipped with trtop when ``path`` is None."""
    if path is None:
        text = resources.files("trtop_dev.devcluster").joinpath(DEFAULT_POOLS_FILE).read_text()
        return load_pools(text, source=f"trtop_dev/devcluster/{DEFAULT_POOLS_FILE}")
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PoolsError(f"cannot read pools file {path}: {err.strerror}") from err
    return load_pools(text, source=str(path))


def _parse_pool(item: object, defaults: Mapping[str, Any], where: str) -> Pool:
    if not isinstance(item, Mapping):
        raise PoolsError(f"{where}: expected a mapping with at least 'name' and 'count'")
    _check_fields(item, _POOL_FIELDS, where)
    name = item.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 50:
        raise PoolsError(f"{where}: name {name!r} must be a lower-case DNS label of at most 50 characters")
    where = f"{where} ({name})"
    count = _int(item.get("count"), f"{where}: count", minimum=0)
    labels = item.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise PoolsError(f"{where}: labels must map strings to strings (quote numbers and booleans)")
    taints = item.get("taints") or []
    if not isinstance(taints, list) or not all(isinstance(t, Mapping) and "key" in t and "effect" in t for t in taints):
        raise PoolsError(f"{where}: taints must be a list of {{key, value, effect}} mappings")
    gpu = item.get("gpu")
    return Pool(
        name=name,
        count=count,
        cpu=str(item.get("cpu", "32")),
        memory=str(item.get("memory", "128Gi")),
        pods=_int(item.get("pods", DEFAULT_PODS), f"{where}: pods", minimum=1),
        instance_type=str(item["instanceType"]) if item.get("instanceType") else None,
        labels={str(k): v for k, v in labels.items()},
        taints=tuple(dict(t) for t in taints),
        gpu=_parse_gpu(gpu, defaults, f"{where}: gpu") if gpu is not None else None,
    )


def _parse_gpu(item: object, defaults: Mapping[str, Any], where: str) -> Gpu:
    if not isinstance(item, Mapping):
        raise PoolsError(f"{where}: expected a mapping with product, computeCapability and count")
    _check_fields(item, _GPU_FIELDS, where)
    product = item.get("product")
    if not isinstance(product, str) or not product or " " in product:
        raise PoolsError(f"{where}: product {product!r} must be GFD's form, spaces as '-' (NVIDIA-L4)")
    cc = item.get("computeCapability", "")
    # Unquoted, YAML reads 8.10 as the float 8.1: insist on a string.
    if not isinstance(cc, str) or not _CC.match(cc):
        raise PoolsError(f"{where}: computeCapability {cc!r} must be 'MAJOR.MINOR' in quotes, e.g. \"9.0\"")
    return Gpu(
        product=product,
        compute_capability=cc,
        count=_int(item.get("count"), f"{where}: count", minimum=1),
        memory_mib=_int(item.get("memoryMiB", 0), f"{where}: memoryMiB", minimum=0),
        mig_capable=bool(item.get("migCapable", False)),
        replicas=_int(item.get("replicas", 1), f"{where}: replicas", minimum=1),
        driver_version=str(item.get("driverVersion", defaults.get("driverVersion", "580.159.04"))),
        cuda_version=str(item.get("cudaVersion", defaults.get("cudaVersion", "13.0"))),
    )


def _check_fields(item: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(item) - known)
    if unknown:
        raise PoolsError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")


def _int(value: object, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PoolsError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    return value
