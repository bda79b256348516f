"""kopf registration: the decorators only, each a line or two calling the real code.

Imported by ``trtop operator`` (kopf.operator) and by ``kopf run -m trtop.handlers.main``.
Every watch is an ``on.event`` handler that updates the in-memory cache and queues the
ModelDeployments the change concerns (no kopf finalizers, annotations or patches): at once
for a spec or node change, after ``coalesce_seconds`` for a child's (bursts coalesce);
``trtop.handlers.workers`` reconciles from the queue.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from trtop import names
from trtop.config import Settings
from trtop.handlers import autoscaling, gc, workers
from trtop.k8s.cache import CACHE

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()
STOP_SECONDS = 30.0  # for the background loops at shutdown, all together
CACHE.share_builds(SETTINGS.store_peers)
_background: list[tuple[asyncio.Task[Any], asyncio.Event]] = []
_OURS = {names.LABEL_MANAGED_BY: names.APP_NAME}


@kopf.on.startup()
async def on_startup_operator(settings: kopf.OperatorSettings, **_: Any) -> None:
    from trtop.handlers.startup import configure

    configure(settings, SETTINGS)
    await workers.prime(SETTINGS)
    _background.append(workers.start(SETTINGS))
    _background.append(autoscaling.start(SETTINGS))
    collecting = gc.start(SETTINGS)
    if collecting is not None:
        _background.append(collecting)


@kopf.on.cleanup()
async def on_cleanup_operator(**_: Any) -> None:
    """Every loop told to stop at once, then each given until ``STOP_SECONDS`` have passed; one
    that does not stop (or failed) is logged and the others are still waited for."""
    for _task, stopped in _background:
        stopped.set()
    deadline = asyncio.get_running_loop().time() + STOP_SECONDS
    for task, _stopped in _background:
        try:
            await asyncio.wait_for(task, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        except Exception as e:  # noqa: BLE001 - (TimeoutError too) the next loop must still be stopped
            log.warning("A background loop did not stop cleanly: %s: %s", type(e).__name__, e)
    _background.clear()


@kopf.on.probe(id="loops")
def on_probe_loops(**_: Any) -> dict[str, float]:
    return workers.liveness(SETTINGS)  # raises (liveness fails) when a loop stopped making progress


@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
async def on_event_model_deployment(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_model_deployment(str(type), body))


@kopf.on.event("", "v1", "nodes")
async def on_event_node(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_node(str(type), body))


@kopf.on.event("", "v1", "pods")
async def on_event_pod(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_pod(str(type), body))


@kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_COMPONENT: names.COMPONENT_ENGINE_BUILD})
async def on_event_job(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_job(str(type), body), SETTINGS.coalesce_seconds)


@kopf.on.event("apps", "v1", "deployments", labels=_OURS)
async def on_event_deployment(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_deployment(str(type), body), SETTINGS.coalesce_seconds)


# A quota or LimitRange with room again: units whose pods they refused try again now (names.ANNOTATION_QUOTA_RETRY).
# Coalesced like child events: a namespace whose usage falls pod by pod marks each refused unit once per window.
@kopf.on.event("", "v1", "resourcequotas")
async def on_event_resource_quota(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_admission_policy("ResourceQuota", str(type), body), SETTINGS.coalesce_seconds)


@kopf.on.event("", "v1", "limitranges")
async def on_event_limit_range(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_admission_policy("LimitRange", str(type), body), SETTINGS.coalesce_seconds)


@kopf.on.event("", "v1", "services", labels=_OURS)
async def on_event_service(type: str | None, body: kopf.Body, **_: Any) -> None:
    workers.enqueue(CACHE.on_service(str(type), body), SETTINGS.coalesce_seconds)
