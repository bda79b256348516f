"""From a pod's container to a local process: argv, environment and working dir (pure).

A process cannot have mounts or its own network namespace, so the spec is rewritten:
each volumeMount's ``mountPath`` found at the start of a path in an env value (JSON
inside the value included) or an argument becomes the local folder behind the volume,
longest mountPath first; ``0.0.0.0`` becomes the pod's own loopback address. The exact
rules are in docs/local-runner.md. Called by ``trtop_dev.localrunner.pod``; tested without a
cluster in tests/localrunner/test_podspec.py.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Executables that mean "the Python / trtop of this checkout" inside trtop's images.
TRTOP_ARGV = (sys.executable, "-m", "trtop.cli")
PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})
ANY_ADDRESS = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")
# Where a mountPath may start: the string start, after a separator, or after file://.
_PATH_START = r"(?:(?<=file://)|(?<![^\s\"'=:,;(\[{]))"
_PATH_END = r"(?=$|[/\s\"',;:)\]}])"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

Lookup = Callable[[str, str, str], Mapping[str, str] | None]  # (kind, namespace, name) -> data | None


class PodSpecError(ValueError):
    """This pod cannot run as a local process; ``reason`` is a CamelCase word for its status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Mount:
    """One volumeMount: the path the container expects and the local folder behind it."""

    path: str
    local: str


@dataclass(frozen=True)
class ProcessSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str


class Rewriter:
    """Rewrites mount paths and the any-address in one pod's strings."""

    def __init__(self, mounts: Sequence[Mount], pod_ip: str) -> None:
        usable = [m for m in mounts if m.path.rstrip("/")]  # a mount at "/" would match every path
        self._local = {m.path.rstrip("/"): m.local for m in usable}
        paths = sorted(self._local, key=len, reverse=True)
        self._pattern = (re.compile(_PATH_START + "(" + "|".join(map(re.escape, paths)) + ")" + _PATH_END)
                         if paths else None)
        self.pod_ip = pod_ip

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(lambda m: self._local[m.group(1)], text)
        return ANY_ADDRESS.sub(self.pod_ip, text)

    def path(self, path: str) -> str | None:
        """The local path of an absolute container path under a mount, else None."""
        for mount_path in sorted(self._local, key=len, reverse=True):
            if path == mount_path or path.startswith(mount_path + "/"):
                return self._local[mount_path] + path[len(mount_path):]
        return None


def expand_refs(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, others kept, ``$$`` -> ``$``."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(one, text)


def map_executable(argv: Sequence[str]) -> list[str]:
    """``trtop`` -> this interpreter running ``trtop.cli``; ``python``/``python3`` -> this interpreter."""
    if not argv:
        return []
    head, rest = argv[0], list(argv[1:])
    if head in ("trtop", "/usr/local/bin/trtop"):
        return [*TRTOP_ARGV, *rest]
    if head.rsplit("/", 1)[-1] in PYTHON_NAMES:
        return [sys.executable, *rest]
    return [head, *rest]


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """A downward-API ``fieldRef.fieldPath`` of ``pod`` (the IPs are the runner's, not yet posted)."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip, "status.podIPs": pod_ip, "status.hostIP": host_ip, "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise PodSpecError("UnsupportedFieldRef", f"fieldRef {path!r} is not supported by the local runner")


def resolve_env(pod: Mapping[str, Any], container: Mapping[str, Any], rewrite: Rewriter, host_ip: str,
                lookup: Lookup) -> dict[str, str]:
    """The container's own variables in Kubernetes order: ``envFrom`` first, then ``env``.

    Literal values and values from ConfigMaps/Secrets are rewritten (mount paths, 0.0.0.0)
    before ``$(VAR)`` expansion, so an expanded value is never rewritten twice.
    """
    namespace = pod["metadata"].get("namespace", "default")
    out: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source.get("configMapRef"))
        if not ref:
            continue
        data = lookup(kind, namespace, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise PodSpecError("CreateContainerConfigError", f"{kind.lower()} {ref['name']!r} not found (envFrom)")
        prefix = source.get("prefix", "")
        for key, value in data.items():
            out[prefix + key] = rewrite(value)
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            out[name] = expand_refs(rewrite(str(item.get("value", ""))), out)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            out[name] = field_value(pod, source["fieldRef"]["fieldPath"], rewrite.pod_ip, host_ip)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind, ref = ("Secret", source["secretKeyRef"]) if "secretKeyRef" in source else (
                "ConfigMap", source["configMapKeyRef"])
            data = lookup(kind, namespace, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = f"{kind.lower()} {ref['name']!r}" + ("" if data is None else f" has no key {ref['key']!r}")
                raise PodSpecError("CreateContainerConfigError", f"env {name}: {what}" + (" not found" if data is None else ""))
            out[name] = rewrite(data[ref["key"]])
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]  # e.g. limits.cpu
            kind_, _, res = resource.partition(".")
            out[name] = str((container.get("resources") or {}).get(kind_, {}).get(res, "0"))
        else:
            raise PodSpecError("CreateContainerConfigError", f"env {name}: unsupported valueFrom {sorted(source)}")
    return out


def build_process(pod: Mapping[str, Any], container: Mapping[str, Any], *, rewrite: Rewriter, host_ip: str,
                  base_env: Mapping[str, str], forced_env: Mapping[str, str], default_cwd: str,
                  lookup: Lookup) -> ProcessSpec:
    """The local process for ``container``: its own env over ``base_env``, ``forced_env`` last."""
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command:
        raise PodSpecError("NoCommand", f"container {container['name']!r} (image {container.get('image')!r}) has "
                           "no command: the local runner cannot read an image's entrypoint; set `command`")
    own = resolve_env(pod, container, rewrite, host_ip, lookup)
    env = {**base_env, **own, **forced_env}
    if "TMPDIR" in own:
        env["TMPDIR"] = own["TMPDIR"]
    argv = [expand_refs(rewrite(a), env) for a in (*command, *args)]
    cwd = default_cwd
    if container.get("workingDir"):
        cwd = rewrite.path(container["workingDir"]) or default_cwd
    return ProcessSpec(argv=tuple(map_executable(argv)), env=env, cwd=cwd)
