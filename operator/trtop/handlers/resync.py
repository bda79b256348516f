"""The resync loop: reconcile every ModelDeployment every few seconds, level-based.

Why not ``kopf.timer``: kopf puts a finalizer on every object with a timer, so deleting a
ModelDeployment (or its namespace) would hang whenever the operator is not running.
Owner references already clean up what trtop makes; this loop needs no finalizer.
It is what notices changes kopf does not watch: nodes joining, Jobs finishing, engines
appearing in the store.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from trtop.config import Settings
from trtop.handlers.modeldeployment import reconcile
from trtop.k8s import peering
from trtop.k8s.events import list_model_deployments

log = logging.getLogger(__name__)


def resync_once(settings: Settings) -> int:
    """Reconcile each ModelDeployment once; returns how many were handled (0 on a standby replica)."""
    if not peering.this_replica_works():
        return 0
    count = 0
    for body in list_model_deployments(settings.namespaces):
        if body["metadata"].get("deletionTimestamp"):
            continue
        try:
            reconcile(body, settings)  # every failure ends in the object's status
        except Exception:  # noqa: BLE001 - one object's bug must not stop the others' reconciles
            log.exception("Resync of %s/%s failed", body["metadata"]["namespace"], body["metadata"]["name"])
        count += 1
    return count


async def resync_forever(settings: Settings, interval: float, stopped: asyncio.Event) -> None:
    while not stopped.is_set():
        try:
            await asyncio.to_thread(resync_once, settings)
        except Exception:  # noqa: BLE001 - listing failed (API down): try again next round
            log.exception("Resync round failed")
        try:
            await asyncio.wait_for(stopped.wait(), timeout=interval)
        except asyncio.TimeoutError:
            pass


def start(settings: Settings, interval: float) -> tuple[asyncio.Task[Any], asyncio.Event]:
    stopped = asyncio.Event()
    return asyncio.create_task(resync_forever(settings, interval, stopped), name="trtop-resync"), stopped
