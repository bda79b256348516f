"""Pieces every trtop workload shares: labels, owner reference, pod security, store access."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from trtop import names, versions
from trtop.api.targets import Target
from trtop.config import Settings
from trtop.store import scoped_uri

Manifest = dict[str, Any]


def labels(md_name: str, component: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {
        names.LABEL_NAME: names.APP_NAME,
        names.LABEL_INSTANCE: md_name,
        names.LABEL_COMPONENT: component,
        names.LABEL_MANAGED_BY: names.APP_NAME,
        names.LABEL_PART_OF: names.APP_NAME,
        "app.kubernetes.io/version": versions.TRTOP_VERSION,
        names.LABEL_MODEL_DEPLOYMENT: md_name,
    }
    out.update(extra or {})
    return out


def owner_reference(md: Mapping[str, Any]) -> dict[str, Any]:
    meta = md["metadata"]
    return {
        "apiVersion": names.API_VERSION, "kind": names.KIND, "name": meta["name"], "uid": meta["uid"],
        "controller": True, "blockOwnerDeletion": True,
    }


# Build and serving pods run tenant-chosen models (and maybe images): no API token in them.
NO_API_TOKEN: dict[str, Any] = {"automountServiceAccountToken": False}
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
GPU_TOLERATION: dict[str, Any] = {"key": names.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def target_node_term(target: Target) -> dict[str, Any]:
    """One nodeSelectorTerm admitting exactly the nodes of ``target`` (never keyed on gpu.family)."""
    if target.is_cpu:
        return {"matchExpressions": [{"key": names.GFD_CC_MAJOR, "operator": "DoesNotExist"}]}
    major, minor = target.cc.split(".")
    exprs: list[dict[str, Any]] = [
        {"key": names.GFD_CC_MAJOR, "operator": "In", "values": [major]},
        {"key": names.GFD_CC_MINOR, "operator": "In", "values": [minor]},
    ]
    if target.product:
        exprs.append({"key": names.GFD_PRODUCT, "operator": "In",
                      "values": [target.product, f"{target.product}-SHARED"]})
    return {"matchExpressions": exprs}


def workload_store_uri(settings: Settings, scope: str) -> str:
    """The store as a workload sees it: only its scope (the claim's sub-path, or the bucket prefix's)."""
    return settings.store_mount_path if settings.store_pvc else scoped_uri(settings.store_uri, scope)


STORE_VOLUME = "engine-store"  # the store claim's volume in workloads (there only with a PVC store)


def store_access(
    settings: Settings, scope: str, *, tmp_size: str, write_key: str = "",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, envFrom, volumes, volumeMounts) that let a workload reach its scope of the engine store.

    Every workload mounts the claim's ``<scope>`` sub-path read-only. A build Job
    (``write_key``: the key it builds) mounts over it, writable, only what it writes:
    ``<scope>/<key>`` (the filesystem store publishes inside the key's folder, see
    ``trtop.store.filesystem``) and ``<scope>/_timing-caches``; so a build, whatever its image
    or model runs, cannot touch another key's engine. S3 gets the scope's prefix (per-key write limits are the bucket
    policy's job, docs/install.md), and serving pods the read-only Secret when the chart names one.
    """
    env = [{"name": names.ENV_STORE_URI, "value": workload_store_uri(settings, scope)}]
    env += [{"name": k, "value": v} for k, v in sorted(settings.workload_env.items())]
    env_from: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if settings.store_pvc:
        volumes.append({"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": settings.store_pvc,
                                                                          "readOnly": not write_key}})
        mounts.append({"name": STORE_VOLUME, "mountPath": settings.store_mount_path, "subPath": scope,
                       "readOnly": True})
        if write_key:  # writable mounts over the read-only scope (the operator makes them first: store_folders)
            mounts += [{"name": STORE_VOLUME, "mountPath": f"{settings.store_mount_path}/{sub}",
                        "subPath": f"{scope}/{sub}", "readOnly": False} for sub in (write_key, names.TIMING_CACHES)]
    secret = settings.store_secret if write_key else (settings.store_read_secret or settings.store_secret)
    if secret:
        env_from.append({"secretRef": {"name": secret}})
    return env, env_from, volumes, mounts


def store_folders(job: Mapping[str, Any]) -> tuple[str, ...]:
    """The store claim's sub-paths a build Job mounts writable (``<scope>/<key>``, ``<scope>/_timing-caches``).

    The operator makes them before it creates the Job: a kubelet makes a missing sub-path
    itself, as root with mode 0755, which the build (non-root) then cannot write to.
    """
    pod = job["spec"]["template"]["spec"]
    return tuple(m["subPath"] for c in pod["containers"] for m in c.get("volumeMounts") or ()
                 if m["name"] == STORE_VOLUME and m.get("subPath") and not m.get("readOnly"))


def with_applied_hash(manifest: Manifest) -> Manifest:
    """``manifest`` annotated with the hash of its own content: compared with the live
    object's annotation, it says whether an apply would change anything."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), names.ANNOTATION_APPLIED_HASH: digest}
    return {**manifest, "metadata": meta}


def applied_hash(manifest: Manifest) -> str:
    return str(((manifest.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_APPLIED_HASH, ""))
