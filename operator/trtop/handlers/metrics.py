"""The operator's own Prometheus metrics (served on ``TRTOP_METRICS_PORT``)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("trtop_operator_reconciles_total", "ModelDeployment reconciles by outcome", ["outcome"])
BUILDS = Counter("trtop_operator_builds_total", "Engine builds by outcome (created, succeeded, failed)", ["outcome"])
ENGINE_CACHE_HITS = Counter("trtop_operator_engine_cache_hits_total",
                            "Engines found ready in the store without a build of ours")
SCALE_CHANGES = Counter("trtop_operator_scale_changes_total", "Replica changes made by the autoscaler", ["direction"])
ENGINES_COLLECTED = Counter("trtop_operator_engines_collected_total",
                            "Engines deleted from the store by garbage collection (nothing referenced them)")
MODEL_DEPLOYMENTS = Gauge("trtop_operator_model_deployments", "ModelDeployments by phase", ["phase"])
RECONCILE_SECONDS = Histogram("trtop_operator_reconcile_seconds", "Duration of one reconcile (plan + apply + status)",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
QUEUED = Counter("trtop_operator_queue_adds_total", "ModelDeployments put on the work queue (before coalescing)")
