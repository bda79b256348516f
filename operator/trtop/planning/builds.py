"""The build Job for one engine: pinned to its architecture, one GPU, non-root, bounded.

Retries: the Job's backoffLimit covers infrastructure failures (OOM, preemption, exit
code 3); a user error (exit code 2: bad model, unsupported op) fails the Job at once
through podFailurePolicy. A failed Job stays for ``retryAfterSeconds`` (its TTL) so its
message stays visible; once the TTL removes it the planner creates a fresh one: the
retry with backoff. A succeeded Job's TTL is short: the engine lives in the store.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from trtop import names
from trtop.api.fetch import MODEL_MOUNT_ROOT
from trtop.api.spec import ModelDeploymentSpec
from trtop.config import Settings
from trtop.planning.common import (
    CONTAINER_SECURITY_CONTEXT, GPU_TOLERATION, NO_API_TOKEN, POD_SECURITY_CONTEXT, Manifest, labels,
    owner_reference, store_access, target_node_term,
)
from trtop.planning.engines import EngineStatus

EXIT_USER_ERROR = 2  # the converter's "do not retry" exit code (see docs/converter.md)
CONVERT_CONTAINER = "convert"


def build_job(md: Mapping[str, Any], spec: ModelDeploymentSpec, engine: EngineStatus, settings: Settings) -> Manifest:
    md_name = md["metadata"]["name"]
    request = engine.request
    lbls = labels(md_name, names.COMPONENT_ENGINE_BUILD, {
        names.LABEL_ENGINE_KEY: request.key, names.LABEL_TARGET: request.target.slug,
    })
    env, env_from, volumes, mounts = store_access(settings, request.scope, write_key=request.key,
                                                  tmp_size=settings.build_tmp_size)
    env.append({"name": names.ENV_ENGINE_REQUEST, "value": request.to_json()})
    file_roots: tuple[str, ...] = ()  # local files a build may read: only the model's own claim
    if spec.model.uri.startswith("pvc://"):
        claim = spec.model.uri[len("pvc://"):].split("/", 1)[0]
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": f"{MODEL_MOUNT_ROOT}/{claim}", "readOnly": True})
        file_roots = (f"{MODEL_MOUNT_ROOT}/{claim}",)
    policy = replace(settings.fetch_policy, file_roots=file_roots)
    env.append({"name": names.ENV_FETCH_POLICY, "value": policy.to_json()})
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}}
    if not request.target.is_cpu:
        resources["limits"][names.GPU_RESOURCE] = "1"
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        **NO_API_TOKEN,
        "securityContext": POD_SECURITY_CONTEXT,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [target_node_term(request.target)]}}},
        "tolerations": build_tolerations(spec),
        "containers": [{
            "name": CONVERT_CONTAINER,
            "image": spec.engine.builder_image or (settings.converter_cpu_image if request.target.is_cpu
                                                   else settings.converter_image),
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["trtop", "convert"],
            "env": env, "envFrom": env_from, "volumeMounts": mounts,
            "resources": resources,
            "securityContext": CONTAINER_SECURITY_CONTEXT,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": volumes,
    }
    if spec.serving.node_selector:  # build where serving may run (discovery used the same selector)
        pod_spec["nodeSelector"] = dict(spec.serving.node_selector)
    if settings.workload_service_account:
        pod_spec["serviceAccountName"] = settings.workload_service_account
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": engine.job_name, "namespace": md["metadata"]["namespace"], "labels": lbls,
            "annotations": {names.ANNOTATION_ENGINE_REQUEST: request.to_json()},
            "ownerReferences": [owner_reference(md)],
        },
        "spec": {
            "backoffLimit": spec.engine.backoff_limit,
            "activeDeadlineSeconds": spec.engine.build_timeout_seconds,
            "ttlSecondsAfterFinished": spec.engine.retry_after_seconds,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONVERT_CONTAINER, "operator": "In",
                                                      "values": [EXIT_USER_ERROR]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {"metadata": {"labels": {**spec.engine.pod_labels, **lbls},
                                      "annotations": dict(spec.engine.pod_annotations)},
                         "spec": pod_spec},
        },
    }


def build_tolerations(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """engine.tolerations, else only the serving tolerations of GPU taints (keys under nvidia.com/):
    a taint meant for serving pods (a dedicated inference pool) does not let builds in."""
    if spec.engine.tolerations is not None:
        chosen = spec.engine.tolerations
    else:
        chosen = tuple(t for t in spec.serving.tolerations if str(t.get("key", "")).startswith("nvidia.com/"))
    return [GPU_TOLERATION, *(dict(t) for t in chosen if dict(t) != GPU_TOLERATION)]


def should_create_job(engine: EngineStatus) -> bool:
    return engine.state == "Pending"
