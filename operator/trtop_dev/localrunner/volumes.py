"""A pod's volumes as local folders, and its volumeMounts as (mountPath, folder) pairs.

- emptyDir: ``<pod dir>/volumes/<name>``, removed with the pod.
- persistentVolumeClaim: the bound PersistentVolume's ``hostPath.path`` / ``local.path``
  when it has one (so two claims on one hostPath volume share files, as they would on a
  node), else ``<pvc root>/<namespace>/<claim>`` (kept across pods and runs).
- hostPath: the path itself (created for ``DirectoryOrCreate`` / no type).
- configMap, secret, downwardAPI, projected: files written under ``<pod dir>/volumes/<name>``
  (a projected service-account token is not minted: processes reach the API through
  KUBECONFIG instead, see docs/local-runner.md).
Anything else makes the pod fail with reason ``UnsupportedVolume``. Called by
``trtop_dev.localrunner.pod``.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtop_dev.localrunner.kube import Kube, KubeError
from trtop_dev.localrunner.podspec import Mount, PodSpecError, field_value

_FILE_SOURCES = ("configMap", "secret", "downwardAPI", "projected")


def lookup_data(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, str] | None:
    """A ConfigMap's data or a Secret's decoded data; None when it does not exist."""
    plural = "secrets" if kind == "Secret" else "configmaps"
    obj = kube.get_or_none(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
    if obj is None:
        return None
    if kind == "Secret":
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def claim_dir(kube: Kube, namespace: str, claim: str, pvc_root: Path) -> Path:
    """Where a claim's files live locally (see the module docstring)."""
    try:
        pvc = kube.get_or_none(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        volume_name = (pvc or {}).get("spec", {}).get("volumeName")
        pv = kube.get_or_none(f"/api/v1/persistentvolumes/{volume_name}") if volume_name else None
    except KubeError as err:
        raise PodSpecError("VolumeError", f"claim {claim!r}: {err}") from err
    spec = (pv or {}).get("spec", {})
    host = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
    path = Path(host) if host else pvc_root / namespace / claim
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_volumes(kube: Kube, pod: Mapping[str, Any], pod_dir: Path, pvc_root: Path, pod_ip: str,
                    host_ip: str) -> dict[str, Path]:
    """Volume name -> local folder for every volume of ``pod`` (creating and filling them)."""
    namespace = pod["metadata"].get("namespace", "default")
    out: dict[str, Path] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        local = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
            out[name] = local
        elif "persistentVolumeClaim" in volume:
            out[name] = claim_dir(kube, namespace, volume["persistentVolumeClaim"]["claimName"], pvc_root)
        elif "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type", "") in ("", "DirectoryOrCreate"):
                path.mkdir(parents=True, exist_ok=True)
            out[name] = path
        elif any(k in volume for k in _FILE_SOURCES):
            local.mkdir(parents=True, exist_ok=True)
            sources = (volume["projected"].get("sources") or []) if "projected" in volume else [volume]
            for source in sources:
                _write_source(kube, pod, source, local, pod_ip, host_ip)
            out[name] = local
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise PodSpecError("UnsupportedVolume", f"volume {name!r} of type {', '.join(kinds)} is not supported by "
                               "the local runner (emptyDir, persistentVolumeClaim, hostPath, configMap, secret, "
                               "downwardAPI and projected are)")
    return out


def mounts_of(container: Mapping[str, Any], volumes: Mapping[str, Path]) -> list[Mount]:
    """The container's volumeMounts as local folders (subPath applied)."""
    mounts = []
    for item in container.get("volumeMounts") or []:
        if item["name"] not in volumes:
            raise PodSpecError("CreateContainerConfigError", f"volumeMount {item['name']!r} names no volume")
        local = volumes[item["name"]]
        if item.get("subPath"):
            local = local / item["subPath"]
            if not local.exists():  # the kubelet makes a missing subPath a folder
                local.mkdir(parents=True)
        mounts.append(Mount(path=item["mountPath"], local=str(local)))
    return mounts


def _write_source(kube: Kube, pod: Mapping[str, Any], source: Mapping[str, Any], into: Path, pod_ip: str,
                  host_ip: str) -> None:
    namespace = pod["metadata"].get("namespace", "default")
    for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
        if key not in source:
            continue
        ref = source[key]
        name = ref.get("name") or ref.get("secretName", "")
        data = lookup_data(kube, kind, namespace, name)
        if data is None:
            if ref.get("optional"):
                return
            raise PodSpecError("VolumeError", f"{kind.lower()} {name!r} not found (volume)")
        items = ref.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        for item in items:
            if item["key"] in data:
                _write(into / item["path"], data[item["key"]], item.get("mode", ref.get("defaultMode")))
    if "downwardAPI" in source:
        for item in source["downwardAPI"].get("items") or []:
            if "fieldRef" in item:
                _write(into / item["path"], field_value(pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip), None)
    # serviceAccountToken / clusterTrustBundle: nothing minted (KUBECONFIG stands in for the token).


def _write(path: Path, text: str, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        os.chmod(path, mode | 0o200)  # keep it writable for the runner's own clean-up
