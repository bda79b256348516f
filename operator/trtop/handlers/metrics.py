"""The operator's own Prometheus metrics (served on ``TRTOP_METRICS_PORT``)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter("trtop_operator_reconciles_total", "ModelDeployment reconciles by outcome", ["outcome"])
BUILDS = Counter("trtop_operator_builds_total", "Engine builds by outcome (created, succeeded, failed)", ["outcome"])
ENGINE_CACHE_HITS = Counter("trtop_operator_engine_cache_hits_total",
                            "Engines found ready in the store without a build of ours")
SCALE_CHANGES = Counter("trtop_operator_scale_changes_total", "Replica changes made by the autoscaler", ["direction"])
ENGINES_COLLECTED = Counter("trtop_operator_engines_collected_total",
                            "Engines deleted from the store by garbage collection (nothing referenced them)")
MODEL_DEPLOYMENTS = Gauge("trtop_operator_model_deployments", "ModelDeployments by phase", ["phase"])
