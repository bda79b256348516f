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
LABEL_TARGET: Final = f"{GROUP}/target"  # a build Job's and a serving unit's architecture (Target.slug)

# Annotations.
ANNOTATION_ENGINE_REQUEST: Final = f"{GROUP}/engine-request"
ANNOTATION_ENGINE_SET: Final = f"{GROUP}/engine-set"
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"
ANNOTATION_ENGINE_KEYS: Final = f"{GROUP}/engine-keys"  # on the Deployment: the keys it serves
ANNOTATION_TEMPLATE_HASH: Final = f"{GROUP}/template-hash"  # on a unit: hash of its pod template
# On a unit rolling with one pod fewer because no GPU of its type was free for a new pod beside the old ones
# (spec.rollout.whenFull ReplaceInPlace): kept until the rollout is done, so it does not flap as pods move.
ANNOTATION_ROLLOUT_IN_PLACE: Final = f"{GROUP}/rollout-in-place"
# On a unit whose pods the API server refused (ReplicaFailure): a digest of its namespace's ResourceQuota and
# LimitRange room when trtop last saw it refused (ClusterCache.admission_state). A raised limit, or a quota's usage
# falling, changes it; the Deployment controller copies a Deployment's annotations onto its ReplicaSet, and that
# update makes the ReplicaSet controller try its pods again at once instead of after its back-off (which grows to
# 1000 s between tries while they are refused). The name is older than the LimitRanges: it stays, so existing units
# are not rewritten.
ANNOTATION_QUOTA_RETRY: Final = f"{GROUP}/quota-retry"
ROLLOUT_WHEN_FULL: Final = ("ReplaceInPlace", "Wait")
# On each object trtop applies: hash of the manifest it applied (re-applied only when it differs).
ANNOTATION_APPLIED_HASH: Final = f"{GROUP}/applied-hash"

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
TIMING_CACHES: Final = "_timing-caches"  # folder of TensorRT timing caches in a store scope (builds write it)

# Environment variables passed to build Jobs and serving pods.
ENV_ENGINE_REQUEST: Final = "TRTOP_ENGINE_REQUEST"
ENV_ENGINE_SET: Final = "TRTOP_ENGINE_SET"
ENV_STORE_URI: Final = "TRTOP_STORE_URI"
ENV_MODEL_NAME: Final = "TRTOP_MODEL_NAME"
ENV_FETCH_POLICY: Final = "TRTOP_FETCH_POLICY"  # build Jobs: the operator's FetchPolicy as JSON

# Prometheus metrics of the inference server (read by the autoscaler and by users).
METRIC_REQUESTS: Final = "trtop_inference_requests_total"  # counter{model,outcome}
METRIC_INFLIGHT: Final = "trtop_inference_inflight_requests"  # gauge{model}
METRIC_QUEUE_SECONDS: Final = "trtop_inference_queue_seconds"  # histogram{model}
METRIC_COMPUTE_SECONDS: Final = "trtop_inference_compute_seconds"  # histogram{model}
METRIC_REQUEST_SECONDS: Final = "trtop_inference_request_duration_seconds"  # histogram{model}
METRIC_BATCH_SIZE: Final = "trtop_inference_batch_size"  # histogram{model}
METRIC_MODEL_LOAD_SECONDS: Final = "trtop_model_load_seconds"  # gauge{model}
METRIC_CORES_AWAKE: Final = "trtop_server_cores_kept_awake"  # --keep-awake: cores spinning now
METRIC_ROWS_APART: Final = "trtop_inference_rows_apart"  # gauge{model}: 1 while full batches run row by row

# Dev cluster and tests only (trtop_dev.devcluster, tests/): fake-node bookkeeping and the kwok
# stage hooks in trtop_dev/devcluster/stages.yaml (that YAML repeats these strings; a test checks).
KWOK_NODE_ANNOTATION: Final = "kwok.x-k8s.io/node"  # value "fake": kwok keeps this node alive
LABEL_DEV_POOL: Final = f"{GROUP}/dev-pool"  # node label: the pools-file pool that made it
LABEL_REAL_NODE: Final = f"{GROUP}/real-node"  # node label and taint "true": the dev cluster's kubelet node
LABEL_KWOK_SKIP: Final = f"{GROUP}/kwok-skip"  # pod label "true": kwok leaves the pod alone
LABEL_KWOK_FAIL: Final = f"{GROUP}/kwok-fail"  # pod label "true": kwok fails it (exit code 1)
ANNOTATION_KWOK_COMPLETE_AFTER: Final = f"{GROUP}/kwok-complete-after"  # pod: Go duration, "5s"
# More GPU Feature Discovery labels the fake GPU nodes carry (see docs/dev-cluster.md).
GFD_DRIVER_VERSION: Final = "nvidia.com/cuda.driver-version.full"
GFD_CUDA_RUNTIME_VERSION: Final = "nvidia.com/cuda.runtime-version.full"
GFD_REPLICAS: Final = "nvidia.com/gpu.replicas"
GFD_SHARING_STRATEGY: Final = "nvidia.com/gpu.sharing-strategy"
GFD_MIG_CAPABLE: Final = "nvidia.com/mig.capable"
GFD_MIG_STRATEGY: Final = "nvidia.com/mig.strategy"  # single | mixed (mixed: GPUs as nvidia.com/mig-<profile>)
# `trtop serve` settings (trtop.serve.settings), besides ENV_ENGINE_SET / ENV_STORE_URI / ENV_MODEL_NAME:
# each command-line option of the server can also come from one of these.
ENV_SERVE_ENGINE_DIR: Final = "TRTOP_ENGINE_DIR"  # a folder with engine.json + artifact (one store key)
ENV_SERVE_MODEL_PATH: Final = "TRTOP_MODEL_PATH"  # a raw .onnx / SavedModel / .plan for quick tries
ENV_SERVE_BACKEND: Final = "TRTOP_BACKEND"  # auto | onnxruntime | tensorrt | tensorflow | module:attr
ENV_SERVE_HOST: Final = "TRTOP_HOST"
ENV_SERVE_PORT: Final = "TRTOP_PORT"
ENV_SERVE_GRPC_PORT: Final = "TRTOP_GRPC_PORT"  # 0 = no gRPC
SERVE_GRPC_PORT: Final = 8001  # the gRPC protocol's port (Triton's), in the pod and on the Service
SERVER_CONTAINER: Final = "server"  # the serving pod's own container (sidecars may not take the name)
ENV_SERVE_GRPC_MAX_CONNECTION_AGE_S: Final = "TRTOP_GRPC_MAX_CONNECTION_AGE_S"  # 0 = connections live forever
ENV_SERVE_MAX_BATCH: Final = "TRTOP_MAX_BATCH"
ENV_SERVE_MAX_QUEUE_DELAY_MS: Final = "TRTOP_MAX_QUEUE_DELAY_MS"
ENV_SERVE_BUCKETS: Final = "TRTOP_BATCH_BUCKETS"
ENV_SERVE_MAX_QUEUE_SIZE: Final = "TRTOP_MAX_QUEUE_SIZE"
ENV_SERVE_TIMEOUT_S: Final = "TRTOP_TIMEOUT_S"
ENV_SERVE_MAX_BODY_MB: Final = "TRTOP_MAX_BODY_MB"
ENV_SERVE_MAX_INFLIGHT_MB: Final = "TRTOP_MAX_INFLIGHT_MB"
ENV_SERVE_MAX_CONNECTIONS: Final = "TRTOP_MAX_CONNECTIONS"
ENV_SERVE_BODY_TIMEOUT_S: Final = "TRTOP_BODY_TIMEOUT_S"
ENV_SERVE_FRONTENDS: Final = "TRTOP_FRONTENDS"
ENV_SERVE_HTTP_FRONTEND: Final = "TRTOP_HTTP_FRONTEND"
ENV_SERVE_GRPC_FRONTEND: Final = "TRTOP_GRPC_FRONTEND"
ENV_SERVE_GRPC_ONLY_FRONTENDS: Final = "TRTOP_GRPC_ONLY_FRONTENDS"
ENV_SERVE_GRPC_GO_THREADS: Final = "TRTOP_GRPC_GO_THREADS"
ENV_SERVE_GROUP_LIMIT: Final = "TRTOP_GROUP_LIMIT"  # descriptors a native front-end keeps at the engine
ENV_SERVE_SMALL_GROUP_LIMIT: Final = "TRTOP_SMALL_GROUP_LIMIT"  # the same, for small requests (0: by the device)
ENV_SERVE_FRONTEND_STUCK_S: Final = "TRTOP_FRONTEND_STUCK_S"  # a front-end's loop silent this long is replaced
# The native HTTP front-end (native/http, Go), looked up on PATH; the server images carry it.
HTTP_FRONTEND_BINARY: Final = "trtop-http"
ENV_SERVE_THREADS: Final = "TRTOP_THREADS"
ENV_SERVE_INSTANCES: Final = "TRTOP_INSTANCES"
ENV_SERVE_KEEP_AWAKE: Final = "TRTOP_KEEP_AWAKE"  # auto | on | off: spinners on idle cores while requests come
ENV_SERVE_SLOT_HANDOFF: Final = "TRTOP_SLOT_HANDOFF"  # GPU slots: the event loop hands the GIL over at each batch
ENV_SERVE_LOOP_POLL_MS: Final = "TRTOP_LOOP_POLL_MS"  # the engine's loop polls this long after a request (cores awake)
ENV_SERVE_SHARED_MEMORY: Final = "TRTOP_SHARED_MEMORY"  # off | system: Triton's system shared memory extension
ENV_SERVE_GPU_IO: Final = "TRTOP_GPU_IO"  # graphs | bind | plain: how a GPU backend feeds its batches
ENV_SERVE_DRAIN_DELAY_S: Final = "TRTOP_DRAIN_DELAY_S"
ENV_SERVE_SHUTDOWN_TIMEOUT_S: Final = "TRTOP_SHUTDOWN_TIMEOUT_S"
ENV_SERVE_CACHE_DIR: Final = "TRTOP_ENGINE_CACHE_DIR"
ENV_SERVE_DEVICE: Final = "TRTOP_DEVICE"  # "cpu" or "9.0/NVIDIA-H100-80GB-HBM3": overrides NVML (tests, debugging)
ENV_SERVE_LOG_LEVEL: Final = "TRTOP_LOG_LEVEL"
