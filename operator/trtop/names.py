"""One source of truth for every name trtop puts on the cluster.

API group/version, labels, annotations, condition types, the field manager and the
component names: imported by the API, the planner, the operator, the converter, the
server and the chart tests. Change a name here and nowhere else.
"""
from __future__ import annotations

from typing import Final

GROUP: Final = "trtop.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ModelDeployment"
PLURAL: Final = "modeldeployments"
SHORT_NAME: Final = "md"

FIELD_MANAGER: Final = "trtop"
FINALIZER: Final = f"{GROUP}/cleanup"

# app.kubernetes.io/* labels carried by every object trtop makes (chart or operator).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
APP_NAME: Final = "trtop"

COMPONENT_OPERATOR: Final = "operator"
COMPONENT_ENGINE_BUILD: Final = "engine-build"
COMPONENT_INFERENCE: Final = "inference"

# trtop's own labels on objects it makes.
LABEL_MODEL_DEPLOYMENT: Final = f"{GROUP}/model-deployment"
LABEL_ENGINE_KEY: Final = f"{GROUP}/engine-key"
LABEL_TARGET: Final = f"{GROUP}/target"

# Annotations.
ANNOTATION_ENGINE_REQUEST: Final = f"{GROUP}/engine-request"
ANNOTATION_ENGINE_SET: Final = f"{GROUP}/engine-set"
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"

# GPU Feature Discovery node labels (NVIDIA/k8s-device-plugin).
GFD_PRODUCT: Final = "nvidia.com/gpu.product"
GFD_CC_MAJOR: Final = "nvidia.com/gpu.compute.major"
GFD_CC_MINOR: Final = "nvidia.com/gpu.compute.minor"
GFD_FAMILY: Final = "nvidia.com/gpu.family"
GFD_MEMORY: Final = "nvidia.com/gpu.memory"
GFD_COUNT: Final = "nvidia.com/gpu.count"
GPU_RESOURCE: Final = "nvidia.com/gpu"

# kstatus-style condition types (status contract in docs/architecture.md).
COND_READY: Final = "Ready"
COND_ENGINES_READY: Final = "EnginesReady"
COND_AVAILABLE: Final = "Available"
COND_RECONCILING: Final = "Reconciling"
COND_STALLED: Final = "Stalled"
COND_DEGRADED: Final = "Degraded"
COND_SCALING_LIMITED: Final = "ScalingLimited"
CONDITION_TYPES: Final = (
    COND_READY, COND_ENGINES_READY, COND_AVAILABLE, COND_RECONCILING, COND_STALLED,
    COND_DEGRADED, COND_SCALING_LIMITED,
)

# Engine metadata file published beside each artifact in the engine store.
ENGINE_METADATA_FILE: Final = "engine.json"

# Environment variables passed to build Jobs and serving pods.
ENV_ENGINE_REQUEST: Final = "TRTOP_ENGINE_REQUEST"
ENV_ENGINE_SET: Final = "TRTOP_ENGINE_SET"
ENV_STORE_URI: Final = "TRTOP_STORE_URI"
ENV_MODEL_NAME: Final = "TRTOP_MODEL_NAME"

# Prometheus metrics of the inference server (read by the autoscaler and by users).
METRIC_REQUESTS: Final = "trtop_inference_requests_total"  # counter{model,outcome}
METRIC_INFLIGHT: Final = "trtop_inference_inflight_requests"  # gauge{model}
METRIC_QUEUE_SECONDS: Final = "trtop_inference_queue_seconds"  # histogram{model}
METRIC_COMPUTE_SECONDS: Final = "trtop_inference_compute_seconds"  # histogram{model}
METRIC_REQUEST_SECONDS: Final = "trtop_inference_request_duration_seconds"  # histogram{model}
METRIC_BATCH_SIZE: Final = "trtop_inference_batch_size"  # histogram{model}
METRIC_MODEL_LOAD_SECONDS: Final = "trtop_model_load_seconds"  # gauge{model}
