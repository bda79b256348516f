"""The dev cluster's binaries: pinned in hack/versions.env, built and cached by hack/build-tools.sh.

``ensure_tools`` runs the build script (a no-op in well under a second once the cache is
warm) and returns where each binary is. Called by the providers, the CLI and the tests'
kubectl/helm helpers.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S*)\s*(#.*)?$")


class ToolsError(RuntimeError):
    """A binary the dev cluster needs is missing and could not be built."""


@dataclass(frozen=True)
class Tools:
    """Absolute paths of every binary, from the version-keyed cache."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwokctl: Path
    helm: Path
    kind: Path

    def missing(self, *, with_kind: bool = False) -> list[Path]:
        paths = [self.kube_apiserver, self.kube_controller_manager, self.kube_scheduler, self.kubectl,
                 self.etcd, self.kwok, self.kwokctl, self.helm] + ([self.kind] if with_kind else [])
        return [p for p in paths if not os.access(p, os.X_OK)]

    def search_path(self) -> str:
        """PATH with our kubectl, helm and kwokctl first (kwokctl looks kubectl up on PATH)."""
        dirs = dict.fromkeys(str(p.parent) for p in (self.kubectl, self.helm, self.kwokctl, self.etcd))
        return os.pathsep.join([*dirs, os.environ.get("PATH", "")])


def parse_versions(text: str) -> dict[str, str]:
    """``NAME=value`` lines of versions.env (comments and blank lines ignored)."""
    versions: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ToolsError(f"versions.env: cannot read line {line!r} (expected NAME=value)")
        versions[match.group(1)] = match.group(2)
    return versions


def read_versions(root: Path) -> dict[str, str]:
    return parse_versions((root / "hack" / "versions.env").read_text())


def cache_dir() -> Path:
    """$TRTOP_CACHE, else $XDG_CACHE_HOME/trtop, else ~/.cache/trtop (as hack/build-tools.sh)."""
    if os.environ.get("TRTOP_CACHE"):
        return Path(os.environ["TRTOP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trtop"


def tools_for(versions: dict[str, str], cache: Path) -> Tools:
    """Where build-tools.sh puts each binary: ``<cache>/bin/<tool>-<version>/``."""
    k8s = cache / "bin" / f"kubernetes-{versions['KUBERNETES_VERSION']}"
    kwok = cache / "bin" / f"kwok-{versions['KWOK_VERSION']}"
    return Tools(
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubectl=k8s / "kubectl",
        etcd=cache / "bin" / f"etcd-{versions['ETCD_VERSION']}" / "etcd",
        kwok=kwok / "kwok",
        kwokctl=kwok / "kwokctl",
        helm=cache / "bin" / f"helm-{versions['HELM_VERSION']}" / "helm",
        kind=cache / "bin" / f"kind-{versions['KIND_VERSION']}" / "kind",
    )


@dataclass(frozen=True)
class NodeTools:
    """The real node's binaries (hack/build-tools.sh node) and the image builder's (buildkit)."""

    kubernetes_version: str
    containerd_version: str
    kubelet: Path
    kube_proxy: Path
    pause: Path
    runc: Path
    containerd: Path
    ctr: Path
    shim: Path
    cni_bin_dir: Path
    buildkitd: Path
    buildctl: Path

    def node_binaries(self) -> list[Path]:
        return [self.kubelet, self.kube_proxy, *self.image_binaries()[:5],
                *(self.cni_bin_dir / p for p in ("bridge", "host-local", "loopback", "portmap"))]

    def image_binaries(self) -> list[Path]:
        """What image builds need: containerd with its pause image, runc, buildkit (no kubelet)."""
        return [self.pause, self.runc, self.containerd, self.ctr, self.shim, self.buildkitd, self.buildctl]

    def missing(self, *, images: bool = False) -> list[Path]:
        paths = self.image_binaries() if images else self.node_binaries()
        return [p for p in paths if not os.access(p, os.X_OK)]


def node_tools_for(versions: dict[str, str], cache: Path) -> NodeTools:
    bin_dir = cache / "bin"
    kubelet = bin_dir / f"kubelet-{versions['KUBERNETES_VERSION']}"
    containerd = bin_dir / f"containerd-{versions['CONTAINERD_VERSION']}"
    buildkit = bin_dir / f"buildkit-{versions['BUILDKIT_VERSION']}"
    return NodeTools(
        kubernetes_version=versions["KUBERNETES_VERSION"],
        containerd_version=versions["CONTAINERD_VERSION"],
        kubelet=kubelet / "kubelet",
        kube_proxy=kubelet / "kube-proxy",
        pause=bin_dir / f"pause-{versions['KUBERNETES_VERSION']}" / "pause",
        runc=bin_dir / f"runc-{versions['RUNC_VERSION']}" / "runc",
        containerd=containerd / "containerd",
        ctr=containerd / "ctr",
        shim=containerd / "containerd-shim-runc-v2",
        cni_bin_dir=bin_dir / f"cni-{versions['CNI_PLUGINS_VERSION']}",
        buildkitd=buildkit / "buildkitd",
        buildctl=buildkit / "buildctl",
    )


def ensure_node_tools(root: Path, *, images: bool = False) -> NodeTools:
    """Build the real node's binaries (or, with ``images``, the image builder's) if missing; return them.

    Cold, on 2 cores: ~7 min for the node, about as long for the image builder.
    """
    tools = node_tools_for(read_versions(root), cache_dir())
    targets = ["runc", "containerd", "pause", "buildkit"] if images else ["node"]
    for target in targets if tools.missing(images=images) else []:
        result = subprocess.run(["bash", str(root / "hack" / "build-tools.sh"), target], check=False)
        if result.returncode != 0:
            raise ToolsError(f"hack/build-tools.sh {target} failed (exit {result.returncode}); its output above "
                             "says which tool failed (runc needs libseccomp-dev, the pause binary gcc)")
    missing = tools.missing(images=images)
    if missing:
        raise ToolsError("missing binaries: " + ", ".join(map(str, missing)) + f"; run hack/build-tools.sh {' '.join(targets)}")
    return tools


def ensure_tools(root: Path, *, with_kind: bool = False, build: bool = True) -> Tools:
    """Build what is missing (hack/build-tools.sh; cold: ~10 min) and return every path."""
    tools = tools_for(read_versions(root), cache_dir())
    if build and tools.missing(with_kind=with_kind):
        targets = ["all", "kind"] if with_kind else ["all"]
        for target in targets:
            result = subprocess.run(["bash", str(root / "hack" / "build-tools.sh"), target], check=False)
            if result.returncode != 0:
                raise ToolsError(
                    f"hack/build-tools.sh {target} failed (exit {result.returncode}); it needs Go >= 1.26 and "
                    "the Go module proxy; its output above says which tool failed"
                )
    missing = tools.missing(with_kind=with_kind)
    if missing:
        raise ToolsError(
            "missing binaries: " + ", ".join(map(str, missing)) + "; run hack/build-tools.sh"
            + (" kind" if with_kind else "")
        )
    return tools
