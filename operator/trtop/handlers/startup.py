"""Operator start-up: kopf settings (the ones kopf's own e2e uses) and the metrics endpoint."""
from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from trtop.config import Settings

log = logging.getLogger(__name__)
_metrics_started = False


class NoDiffBase(kopf.DiffBaseStorage):
    """trtop registers only ``on.event`` handlers: nothing compares an object's essence with
    its last handled one. kopf would still deep-copy every event's whole body to build one
    (at N=300 a ninth of the operator's samples, mostly pod and node events); build none."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    global _metrics_started
    # Progress in annotations: status stays ours (the kstatus contract); no diff-base (above).
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="trtop.io")
    kopf_settings.persistence.diffbase_storage = NoDiffBase()
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
