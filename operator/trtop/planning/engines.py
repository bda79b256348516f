"""Engines a ModelDeployment needs: one request per target, and each one's state.

An engine is Ready only when its record is in the store (a Job's success alone is not
trusted); Building while its Job runs; Failed when the Job failed (or finished without
publishing); Pending when nothing exists yet (a Job will be created);
Unschedulable when no node can build it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from trtop.api.engine import Backend, EngineKey, EngineRecord, EngineRequest, ModelSource, engine_key
from trtop.api.fetch import MODEL_MOUNT_ROOT, redact
from trtop.api.spec import ModelDeploymentSpec
from trtop.api.targets import Target
from trtop.config import Settings
from trtop.planning.common import workload_store_uri
from trtop.planning.facts import ClusterFacts, NodeFact
from trtop.planning.targets import node_matches_selector, nodes_for_target

EngineState = Literal["Ready", "Building", "Pending", "Failed", "Unschedulable"]


@dataclass(frozen=True)
class EngineStatus:
    key: EngineKey
    target: Target
    state: EngineState
    request: EngineRequest
    message: str = ""
    record: EngineRecord | None = None
    job_name: str | None = None


def backend_for(target: Target) -> Backend:
    return "onnxruntime" if target.is_cpu else "tensorrt"


def workload_model_uri(uri: str) -> str:
    """The model URI as a build Job sees it: ``pvc://claim/dir`` becomes the mounted path."""
    if uri.startswith("pvc://"):
        return f"file://{MODEL_MOUNT_ROOT}/{uri[len('pvc://'):]}"
    return uri


def build_engine_request(spec: ModelDeploymentSpec, target: Target, settings: Settings, namespace: str) -> EngineRequest:
    backend = backend_for(target)
    e = spec.engine
    scope = settings.store_scope(namespace)
    key = engine_key(
        model=spec.model, target=target, backend=backend, precision=e.precision, batch=e.batch,
        method=e.method, workspace_mib=e.workspace_mib, hardware_compatibility=e.hardware_compatibility,
        builder_options=e.builder_options,
        trt_version=settings.tensorrt_version if backend == "tensorrt" else settings.onnxruntime_version,
        scope=scope,
    )
    model: ModelSource = replace(spec.model, uri=workload_model_uri(spec.model.uri))
    return EngineRequest(
        key=key, model=model, target=target, backend=backend, precision=e.precision, batch=e.batch,
        method=e.method, workspace_mib=e.workspace_mib, hardware_compatibility=e.hardware_compatibility,
        builder_options=e.builder_options, calibration_uri=e.calibration_uri,
        sample_data_uri=e.sample_data_uri, store_uri=workload_store_uri(settings, scope), scope=scope,
    )


def job_name(request: EngineRequest) -> str:
    """Derived from the key alone: a restarted operator finds its Job, never makes a second."""
    return f"trtop-{request.target.slug}-{request.key[2:]}"[:63].rstrip("-")


def engine_statuses(
    spec: ModelDeploymentSpec, targets: Iterable[Target], facts: ClusterFacts, settings: Settings, namespace: str,
) -> tuple[EngineStatus, ...]:
    usable = [n for n in facts.nodes if node_matches_selector(n.labels, spec.serving.node_selector)]
    return tuple(_status_of(build_engine_request(spec, t, settings, namespace), facts, usable) for t in targets)


def _status_of(request: EngineRequest, facts: ClusterFacts, nodes: Sequence[NodeFact]) -> EngineStatus:
    key, name = request.key, job_name(request)
    record = facts.records.get(key)
    if record is not None:
        return EngineStatus(key, request.target, "Ready", request, record=record, job_name=name)
    job = facts.jobs.get(key)
    if job is not None:
        name = job.name  # (``namespace/name`` when another namespace of the store sharing group builds it)
        if job.state == "active":
            # An active Job's message says why its pod has not started, when it is stuck.
            return EngineStatus(key, request.target, "Building", request,
                                redact(job.message) if job.message else "build Job is running", job_name=name)
        if job.state == "failed":
            return EngineStatus(key, request.target, "Failed", request, redact(job.message or "build Job failed"),
                                job_name=name)
        if facts.store_error:  # succeeded, but we could not look: do not call it failed yet
            return EngineStatus(key, request.target, "Building", request, "waiting for the engine store", job_name=name)
        return EngineStatus(
            key, request.target, "Failed", request,
            "build Job succeeded but no engine.json was published for this key in the engine store",
            job_name=name,
        )
    if not nodes_for_target(request.target, nodes):
        return EngineStatus(
            key, request.target, "Unschedulable", request,
            f"no schedulable node has target {request.target}"
            + (" (a CPU-only node)" if request.target.is_cpu else " with free nvidia.com/gpu"),
            job_name=name,
        )
    return EngineStatus(key, request.target, "Pending", request, "build Job will be created", job_name=name)
