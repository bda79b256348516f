"""Free disk for the real node and the image builds, checked before they start.

A full disk fails far from its cause. BuildKit stops in the middle of an export with "no
space left on device". The kubelet, below its eviction threshold
(``nodeconfig.EVICTION_FREE_PERCENT``), marks the node DiskPressure and admits no pod, so a
Helm install waits out its whole timeout and a test reports a pod that is not ready. Both
check here first, and say how much is free, how much they need and on which filesystem.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30


@dataclass(frozen=True)
class Usage:
    path: Path
    free: int
    total: int


def usage(path: Path) -> Usage:
    """The filesystem of ``path`` (or of its nearest existing parent: the folder may not exist yet)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    found = shutil.disk_usage(probe)
    return Usage(path, found.free, found.total)


def shortfall(found: Usage, *, need: int, reserve_percent: float, purpose: str) -> str | None:
    """None when ``need`` bytes are free above the ``reserve_percent`` the kubelet keeps; else why not."""
    reserve = found.total * reserve_percent / 100
    if found.free - reserve >= need:
        return None
    return (f"{purpose} needs {need / GiB:.1f} GiB free on the filesystem of {found.path} above the "
            f"{reserve_percent:g}% the real node's kubelet keeps free (below it the node is DiskPressure and admits "
            f"no pod); {found.free / GiB:.1f} GiB of {found.total / GiB:.0f} GiB is free. Free some space (old "
            "checkouts, dev clusters left up: `trtop dev cluster down --name NAME`) and run again")
