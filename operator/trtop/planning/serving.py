"""A serving unit's Deployment and the ModelDeployment's one Service.

One unit per (ModelDeployment, architecture): its pod template names exactly that
architecture's engine (``TRTOP_ENGINE_SET`` with one entry: key, artifact, pinned sha256)
and admits only that architecture's nodes, so nothing in it depends on which other
architectures exist: a type joining or leaving never changes another unit's pods. The
Service selects every unit's pods (its selector has no architecture label; each unit's
has). When GPU engines exist, CPU engines are not served (see ``servable``). The server
still checks at start-up that its engine matches its device (``trtop.serve.selection``).
Called by ``trtop.planning.units``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trtop import names
from trtop.api.spec import DEFAULT_HTTP_FRONTEND, DEFAULT_SLOT_HANDOFF, ModelDeploymentSpec, Sidecar, grpc_port
from trtop.api.targets import Target
from trtop.api.validation import NAME_MAX
from trtop.config import Settings
from trtop.planning.common import (
    CONTAINER_SECURITY_CONTEXT, GPU_TOLERATION, NO_API_TOKEN, POD_SECURITY_CONTEXT, Manifest, labels,
    owner_reference, store_access, target_node_term,
)
from trtop.planning.engines import EngineStatus

SIDECAR_TMP = "sidecar-tmp"  # the sidecars' /tmp (an emptyDir): their root filesystem is read-only


def servable(engines: Iterable[EngineStatus]) -> list[EngineStatus]:
    """Ready engines to serve, one unit each: GPU ones when any exist, else CPU ones."""
    ready = [e for e in engines if e.state == "Ready" and e.record is not None]
    gpu = [e for e in ready if not e.target.is_cpu]
    return sorted(gpu or ready, key=lambda e: e.target)


def engine_set(engines: Sequence[EngineStatus]) -> list[dict[str, Any]]:
    """What each serving pod may load: key, target, backend and the artifact's pinned sha256 and size."""
    return [
        {"key": e.key, "target": e.target.to_dict(), "backend": e.record.backend, "artifact": e.record.artifact,
         "sha256": e.record.sha256, "size": e.record.size}
        for e in engines if e.record is not None
    ]


def engine_set_hash(engines: Sequence[EngineStatus]) -> str:
    return hashlib.sha256(json.dumps(engine_set(engines), sort_keys=True).encode()).hexdigest()[:16]


def model_revision(spec: ModelDeploymentSpec) -> str:
    """Hash of what decides the engines' contents (model + engine settings, not targets)."""
    e = spec.engine
    ident = {"model": repr(spec.model), "precision": e.precision, "batch": repr(e.batch), "method": e.method,
             "ws": e.workspace_mib, "hw": e.hardware_compatibility, "opts": sorted(e.builder_options.items())}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def selector_labels(md_name: str) -> dict[str, str]:
    return {names.LABEL_MODEL_DEPLOYMENT: md_name, names.LABEL_COMPONENT: names.COMPONENT_INFERENCE}


def selector_string(md_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md_name).items()))


def unit_selector_labels(md_name: str, target: Target) -> dict[str, str]:
    """A unit's selector: the Service's plus its architecture (units never adopt each other's pods)."""
    return {**selector_labels(md_name), names.LABEL_TARGET: target.slug}


def unit_name(md_name: str, target: Target) -> str:
    """``<md>-<target slug>`` (``resnet-sm90``), a DNS-1123 label of at most 63 characters: a
    long name is cut and given a hash of the whole so two units never share a name."""
    name = f"{md_name}-{target.slug}"
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = NAME_MAX - len(target.slug) - len(digest) - 2
    return f"{md_name[:keep].rstrip('-')}-{digest}-{target.slug}"


def build_unit(
    md: Mapping[str, Any], spec: ModelDeploymentSpec, engine: EngineStatus, replicas: int, settings: Settings,
) -> Manifest:
    """The Deployment of ``engine``'s unit with ``replicas`` pods."""
    meta = md["metadata"]
    md_name = meta["name"]
    engines = [engine]
    gpu = not engine.target.is_cpu
    env, env_from, volumes, mounts = store_access(settings, settings.store_scope(meta["namespace"]),
                                                  tmp_size=settings.serving_tmp_size)
    env += [
        {"name": names.ENV_MODEL_NAME, "value": md_name},
        # Fetched engines go to the pod's own /tmp (an emptyDir): the root filesystem is read-only.
        {"name": "TRTOP_ENGINE_CACHE_DIR", "value": "/tmp/trtop-engines"},
        {"name": names.ENV_ENGINE_SET, "value": json.dumps(engine_set(engines), sort_keys=True)},
        *(dict(e) for e in spec.serving.env),
    ]
    resources: dict[str, Any] = json.loads(json.dumps(spec.serving.resources)) if spec.serving.resources else {}
    if gpu:
        resources.setdefault("limits", {})[names.GPU_RESOURCE] = "1"
    pod_labels = labels(md_name, names.COMPONENT_INFERENCE, {names.LABEL_TARGET: engine.target.slug})
    revision = model_revision(spec)
    set_hash = engine_set_hash(engines)
    port = spec.serving.port
    pod_spec: dict[str, Any] = {
        **NO_API_TOKEN,
        "securityContext": POD_SECURITY_CONTEXT,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [target_node_term(engine.target)]}}},
        "tolerations": [GPU_TOLERATION, *spec.serving.tolerations] if gpu else list(spec.serving.tolerations),
        "terminationGracePeriodSeconds": 60,
        "containers": [{
            "name": names.SERVER_CONTAINER,
            "image": spec.serving.image or (settings.server_image if gpu else settings.server_cpu_image),
            "imagePullPolicy": settings.image_pull_policy,
            "command": ["trtop", "serve", "--host", "0.0.0.0", "--port", str(port),
                        "--grpc-port", str(grpc_port(port)),
                        "--max-queue-delay-ms", str(spec.serving.max_queue_delay_ms),
                        "--max-queue-size", str(spec.serving.max_queue_size),
                        # Only when set: the default leaves the pod template (and running pods) as they were.
                        *(("--keep-awake", spec.serving.keep_awake) if spec.serving.keep_awake != "auto" else ()),
                        *(("--slot-handoff", spec.serving.slot_handoff)
                          if spec.serving.slot_handoff != DEFAULT_SLOT_HANDOFF else ()),
                        *(("--shared-memory", spec.serving.shared_memory)
                          if spec.serving.shared_memory != "off" else ()),
                        *(("--http-frontend", spec.serving.http_frontend)
                          if spec.serving.http_frontend != DEFAULT_HTTP_FRONTEND else ()),
                        # After SIGTERM keep answering (not ready) while endpoints drop the pod.
                        "--drain-delay-s", "5"],
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"},
                      {"name": "grpc", "containerPort": grpc_port(port), "protocol": "TCP"}],
            "env": env, "envFrom": env_from, "volumeMounts": mounts, "resources": resources,
            "securityContext": CONTAINER_SECURITY_CONTEXT,
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                              "failureThreshold": 6},
            "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 5,
                             "failureThreshold": 120},
        }, *(sidecar_container(c, settings) for c in spec.serving.sidecars)],
        "volumes": volumes + ([{"name": SIDECAR_TMP, "emptyDir": {"sizeLimit": settings.serving_tmp_size}}]
                              if spec.serving.sidecars else []),
    }
    if spec.serving.node_selector:
        pod_spec["nodeSelector"] = dict(spec.serving.node_selector)
    if settings.workload_service_account:
        pod_spec["serviceAccountName"] = settings.workload_service_account
    template: dict[str, Any] = {
        "metadata": {"labels": {**spec.serving.pod_labels, **pod_labels}, "annotations": {
            **spec.serving.pod_annotations,
            names.ANNOTATION_SPEC_HASH: revision, names.ANNOTATION_ENGINE_SET: set_hash,
            "prometheus.io/scrape": "true", "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics"}},
        "spec": pod_spec,
    }
    pods = template_hash(template)  # of the template without it: the same template, the same hash
    template["metadata"]["annotations"][names.ANNOTATION_TEMPLATE_HASH] = pods
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": unit_name(md_name, engine.target), "namespace": meta["namespace"], "labels": pod_labels,
            "annotations": {names.ANNOTATION_SPEC_HASH: revision, names.ANNOTATION_ENGINE_SET: set_hash,
                            names.ANNOTATION_ENGINE_KEYS: engine.key,
                            names.ANNOTATION_TEMPLATE_HASH: pods},
            "ownerReferences": [owner_reference(md)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": unit_selector_labels(md_name, engine.target)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": _int_or_str(spec.rollout.max_surge),
                "maxUnavailable": _int_or_str(spec.rollout.max_unavailable)}},
            "template": template,
        },
    }


def sidecar_container(sidecar: Sidecar, settings: Settings) -> dict[str, Any]:
    """A sidecar as the pod runs it: its own image, command, variables, ports and resources, the server's
    restricted security context (read-only root), a /tmp of the sidecars' own and none of the server's
    volumes (they hold the store's credentials). The pod's /dev/shm is shared with the server."""
    container: dict[str, Any] = {"name": sidecar.name, "image": sidecar.image,
                                 "imagePullPolicy": settings.image_pull_policy,
                                 "securityContext": CONTAINER_SECURITY_CONTEXT,
                                 "volumeMounts": [{"name": SIDECAR_TMP, "mountPath": "/tmp"}]}
    for key, value in (("command", list(sidecar.command)), ("args", list(sidecar.args)),
                       ("env", [dict(e) for e in sidecar.env]), ("ports", [dict(p) for p in sidecar.ports]),
                       ("resources", json.loads(json.dumps(sidecar.resources)))):
        if value:
            container[key] = value
    return container


def template_hash(template: Mapping[str, Any]) -> str:
    """What a unit's pods are: equal hashes, same pods (replicas are not part of it)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_service(md: Mapping[str, Any], spec: ModelDeploymentSpec) -> Manifest:
    meta = md["metadata"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": labels(meta["name"], names.COMPONENT_INFERENCE),
                     "ownerReferences": [owner_reference(md)]},
        "spec": {"selector": selector_labels(meta["name"]),
                 "ports": [{"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"},
                           {"name": "grpc", "port": grpc_port(spec.serving.port), "targetPort": "grpc",
                            "protocol": "TCP", "appProtocol": "grpc"}]},
    }


def _int_or_str(value: str) -> int | str:
    return int(value) if value.isdigit() else value
