"""Operator start-up: kopf settings (the ones kopf's own e2e uses) and the metrics endpoint."""
from __future__ import annotations

import logging

import kopf
from prometheus_client import start_http_server

from trtop.config import Settings

log = logging.getLogger(__name__)
_metrics_started = False


def configure(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    global _metrics_started
    # Progress and diff-base in annotations: status stays ours (the kstatus contract), and
    # kopf's bookkeeping never shows up as a GitOps diff of the spec.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="trtop.io")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="trtop.io", key="last-handled-configuration")
    kopf_settings.watching.server_timeout = 60
    kopf_settings.watching.client_timeout = 90
    kopf_settings.execution.max_workers = 8
    kopf_settings.posting.level = logging.INFO
    kopf_settings.batching.error_delays = [1, 2, 5, 10, 30]
    # kopf logs "Handler ... succeeded." for every watch event (thousands a minute in a big
    # cluster); trtop logs what matters itself.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if settings.metrics_port and not _metrics_started:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        _metrics_started = True
        log.info("Operator metrics on %s:%d/metrics", settings.metrics_host, settings.metrics_port)
