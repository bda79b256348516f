"""What the operator observed, as plain data: the planner's input besides the spec.

Built by ``trtop.k8s.observe`` from live objects; built by hand in tests.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from trtop.api.engine import EngineKey, EngineRecord

JobState = Literal["active", "succeeded", "failed"]


@dataclass(frozen=True)
class NodeFact:
    name: str
    labels: Mapping[str, str]
    schedulable: bool = True  # not cordoned, Ready
    gpu_allocatable: int = 0
    gpu_requested: int = 0  # by pods already bound to the node
    # When it stopped being schedulable (NotReady or cordoned), epoch seconds; None while it is,
    # or when unknown. The planner keeps such a node's targets for a grace period.
    down_since: float | None = None


@dataclass(frozen=True)
class JobFact:
    name: str
    key: EngineKey
    state: JobState
    message: str = ""  # failure reason + the converter's termination message / log tail
    user_error: bool = False  # the converter said: do not retry (bad model, unsupported op)


@dataclass(frozen=True)
class DeploymentFact:
    name: str
    engine_set_hash: str  # ANNOTATION_ENGINE_SET on the live Deployment
    model_revision: str  # ANNOTATION_SPEC_HASH: the model/engine revision it serves
    replicas: int
    ready_replicas: int
    updated_replicas: int
    available: bool
    engine_keys: tuple[EngineKey, ...] = ()  # keys it serves (to keep them for rollback)
    foreign: bool = False  # not controlled by this ModelDeployment: never ours to change
    applied_hash: str = ""  # ANNOTATION_APPLIED_HASH: what trtop last applied
    target: str = ""  # LABEL_TARGET: the architecture of a serving unit ("" for the old single Deployment)
    template_hash: str = ""  # ANNOTATION_TEMPLATE_HASH: the pod template it runs
    uid: str = ""  # the object's own uid (a delete names it, so only this object can go)
    # Why the API server refused to create some of its pods (its ReplicaFailure condition: a ResourceQuota, a
    # LimitRange, an admission webhook); "" when it did not. Such pods never exist: no pod fact tells it.
    refused: str = ""
    in_place: bool = False  # ANNOTATION_ROLLOUT_IN_PLACE: rolling one pod fewer at a time (rollout.whenFull)
    quota_retry: str = ""  # ANNOTATION_QUOTA_RETRY: the admission state it was last refused under


@dataclass(frozen=True)
class PodFact:
    """A serving pod of this ModelDeployment (from the watch-fed cache)."""

    name: str
    target: str = ""  # LABEL_TARGET of its unit ("" for a pod of the old single Deployment)
    template_hash: str = ""  # ANNOTATION_TEMPLATE_HASH: the unit template it was made from
    ready: bool = False  # Running, Ready, not being deleted
    unschedulable: bool = False  # the scheduler found no node for it (PodScheduled False, Unschedulable)


@dataclass(frozen=True)
class ObjectFact:
    """A live object of the name trtop would give one of its own (the Service)."""

    foreign: bool = False  # not controlled by this ModelDeployment: never ours to change
    applied_hash: str = ""


@dataclass(frozen=True)
class ClusterFacts:
    nodes: tuple[NodeFact, ...] = ()
    jobs: Mapping[EngineKey, JobFact] = field(default_factory=dict)
    records: Mapping[EngineKey, EngineRecord] = field(default_factory=dict)
    # The serving units: Deployments this ModelDeployment controls that carry an architecture label.
    units: tuple[DeploymentFact, ...] = ()
    # A Deployment named like the ModelDeployment: the single Deployment of trtop before serving
    # units (moved to units, then deleted), or someone else's (then left alone).
    deployment: DeploymentFact | None = None
    pods: tuple[PodFact, ...] = ()  # this ModelDeployment's serving pods
    # Objects named like a unit trtop is about to create that it does not control (never taken over).
    foreign_units: tuple[str, ...] = ()
    service: ObjectFact | None = None
    store_error: str = ""  # the store could not be read this time: never treat engines as gone
    # Unit labels (Target.slug) of architectures where a serving pod of this namespace found no node lately
    # (ClusterCache.full_targets): their GPUs are taken whatever the count of free ones says. The count sees only
    # the pods the operator watches: a namespaced operator sees no other namespace's GPU pods.
    full_targets: frozenset[str] = frozenset()
    # A digest of the room the namespace's ResourceQuotas and LimitRanges leave ("" with none;
    # ClusterCache.admission_state): when it changes (a limit raised, a quota's usage fell), a unit whose pods they
    # refused is tried again at once (names.ANNOTATION_QUOTA_RETRY).
    admission_state: str = ""
    now: float = 0.0  # epoch seconds the facts describe (0: unknown, no node grace period applies)
