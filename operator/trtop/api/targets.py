"""Build/serve targets: which architecture an engine is for, read from GFD node labels.

A target is a compute capability (``"9.0"``) plus, when the engine is not portable across
GPU models of one CC, the GPU product with GFD's ``-SHARED`` / ``-MIG-...`` suffixes
stripped. The CPU target (``cc == "cpu"``) is ONNX Runtime on CPU pools, dev and CI.
Called by the planner (target discovery) and by the server (picking its engine).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NewType

from trtop import names

ComputeCapability = NewType("ComputeCapability", str)
CPU: ComputeCapability = ComputeCapability("cpu")

_MIG_SUFFIX = re.compile(r"-MIG-[0-9A-Za-z.+-]*$")
_CC = re.compile(r"^(cpu|[0-9]+\.[0-9]+)$")


def normalize_product(product: str) -> str:
    """GFD product name without the time-slicing / MIG decorations (they share the silicon)."""
    product = product.strip()
    if product.endswith("-SHARED"):
        product = product[: -len("-SHARED")]
    return _MIG_SUFFIX.sub("", product)


@dataclass(frozen=True)
class Target:
    """One architecture an engine is built for: CC, and product when engines are product-specific.

    Ordered by (cc, product) with "no product" first, so ``8.9`` and ``8.9/NVIDIA-L4`` sort
    side by side (a dataclass order would compare None with a string and raise).
    """

    cc: ComputeCapability
    product: str | None = None

    def _order(self) -> tuple[str, str]:
        return (self.cc, self.product or "")

    def __lt__(self, other: Target) -> bool:
        return self._order() < other._order()

    def __le__(self, other: Target) -> bool:
        return self._order() <= other._order()

    def __gt__(self, other: Target) -> bool:
        return self._order() > other._order()

    def __ge__(self, other: Target) -> bool:
        return self._order() >= other._order()

    @property
    def is_cpu(self) -> bool:
        return self.cc == CPU

    @property
    def slug(self) -> str:
        """DNS-label-safe id, used in Job names and labels: ``sm90``, ``sm90-nvidia-h100-80gb-hbm3``, ``cpu``."""
        base = "cpu" if self.is_cpu else "sm" + self.cc.replace(".", "")
        if self.product:
            base += "-" + re.sub(r"[^a-z0-9]+", "-", self.product.lower()).strip("-")
        return base[:40].rstrip("-")

    def to_dict(self) -> dict[str, str | None]:
        return {"cc": self.cc, "product": self.product}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Target:
        cc = str(data["cc"])
        if not _CC.match(cc):
            raise ValueError(f"compute capability {cc!r} is not 'cpu' or 'MAJOR.MINOR'")
        product = data.get("product")
        return cls(ComputeCapability(cc), str(product) if product else None)

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"9.0"``, ``"8.9/NVIDIA-L4"`` or ``"cpu"`` (the form used in spec.engine.targets)."""
        cc, _, product = text.partition("/")
        return cls.from_dict({"cc": cc.strip(), "product": normalize_product(product) or None})

    def __str__(self) -> str:
        return f"{self.cc}/{self.product}" if self.product else str(self.cc)


def gpu_target_of_node(labels: Mapping[str, str], *, with_product: bool) -> Target | None:
    """The GPU target of a node from its GFD labels, or None when it has no (labelled) GPU."""
    major, minor = labels.get(names.GFD_CC_MAJOR), labels.get(names.GFD_CC_MINOR)
    if not major or not minor or not major.isdigit() or not minor.isdigit():
        return None
    product = labels.get(names.GFD_PRODUCT)
    return Target(
        ComputeCapability(f"{int(major)}.{int(minor)}"),
        normalize_product(product) if (with_product and product) else None,
    )


def is_mig_slice(labels: Mapping[str, str]) -> bool:
    """Whether a node's GPUs are MIG slices (GFD's MIG single strategy: ``gpu.product`` ends ``-MIG-<profile>``).

    An engine of its product would run there, but a build or serving pod admits a product by its exact label values
    (``product``, ``product-SHARED``: node affinity has no prefix match), and listing the profiles seen would change
    a unit's pod template, and roll its pods, whenever a node with a new profile joined. So such nodes are served
    only by engines of a compute capability (``hardwareCompatibility`` other than ``none``), whose pods select on the
    compute capability alone; for a product's engine they are not counted at all (no build Job that could never
    schedule, no free GPU that no pod of the unit could take)."""
    return bool(_MIG_SUFFIX.search(labels.get(names.GFD_PRODUCT, "").strip()))


def product_slug(product: str) -> str:
    """GFD's ``NVIDIA-H100-80GB-HBM3(-SHARED)`` and NVML's ``NVIDIA H100 80GB HBM3`` both -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", normalize_product(product).lower()).strip("-")


def target_matches_device(target: Target, cc: str, product: str | None) -> bool:
    """Whether an engine for ``target`` may run on a device with this CC and product (GFD or NVML spelling).

    The one rule: the server picking its engine and the converter checking the node it landed on
    both ask this (through ``trtop.gpu.device.Device.runs``).
    """
    if target.cc != cc:
        return False
    return target.product is None or (product is not None and product_slug(product) == product_slug(target.product))
