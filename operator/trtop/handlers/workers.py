"""The reconcile workers: take ModelDeployments off the work queue, call the reconcile shell.

Started by ``trtop.handlers.main`` at start-up, after ``prime`` filled the cache with one
list per kind (the watches keep it current from then on): ``settings.workers`` asyncio workers run
the shell in threads, and a safety-net pass queues every object each
``settings.resync_seconds``. A transient failure is queued again with capped exponential
backoff; a Stalled one waits for a change. ``liveness`` makes kopf's /healthz fail when
queued work stops moving (a hung API call would otherwise go unnoticed).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Iterable
from typing import Any

from trtop.config import Settings
from trtop.handlers import metrics
from trtop.handlers.modeldeployment import reconcile
from trtop.handlers.queue import WorkQueue
from trtop.k8s import peering
from trtop.k8s.cache import CACHE, Key
from trtop.k8s.client import configure_timeout
from trtop.k8s.prime import prime_cache

log = logging.getLogger(__name__)
QUEUE: WorkQueue[Key] = WorkQueue()
_LIVENESS_FACTOR = 4  # a loop is stuck after this many API timeouts without progress


def enqueue(keys: Iterable[Key], delay: float = 0.0) -> None:
    """Queue ``keys`` (after ``delay`` seconds: the coalescing window of child events)."""
    for key in keys:
        QUEUE.add(key, delay)
        metrics.QUEUED.inc()


def reconcile_key(key: Key, settings: Settings) -> float | None:
    """Reconcile one object from the cache; returns a retry delay, or None when done."""
    body = CACHE.model_deployment(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    started = time.perf_counter()
    outcome = reconcile(body, settings)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    generation = int(body["metadata"].get("generation") or 0)
    CACHE.handled(key, generation, tuple(e.key for e in outcome.plan.engines) if outcome.plan else ())
    if outcome.should_retry:
        return -1.0  # backoff chosen by the queue
    if outcome.status_deferred:  # the applied objects' events come back within the window; this is the net
        return settings.coalesce_seconds
    if outcome.plan is not None and outcome.plan.recheck_after is not None:
        return outcome.plan.recheck_after
    return None


async def _worker(settings: Settings, stopped: asyncio.Event, threads: concurrent.futures.Executor) -> None:
    loop = asyncio.get_running_loop()
    while not stopped.is_set():
        key = await QUEUE.get()
        try:
            delay = await loop.run_in_executor(threads, reconcile_key, key, settings)
        except Exception:  # noqa: BLE001 - a bug for one object must not stop the worker
            log.exception("Reconcile of %s/%s failed; retrying with backoff", *key)
            delay = -1.0
        QUEUE.done(key)
        if delay is None:
            QUEUE.forget(key)
        elif delay < 0:
            QUEUE.retry(key)
        else:
            QUEUE.forget(key)
            QUEUE.add(key, delay)


async def prime(settings: Settings) -> None:
    """Fill the cache before kopf's watches start (awaited by the start-up handler)."""
    configure_timeout(settings.api_timeout_seconds)
    while True:
        try:
            await asyncio.to_thread(prime_cache, settings.namespaces)
            return
        except Exception as e:  # noqa: BLE001 - API not reachable yet: try again
            log.warning("Priming the cache failed (retrying in 5 s): %s: %s", type(e).__name__, str(e)[:300])
            await asyncio.sleep(5)


async def _resync(settings: Settings, stopped: asyncio.Event) -> None:
    """Queue every object now and each ``resync_seconds`` (the safety net)."""
    while not stopped.is_set():
        try:
            if await asyncio.to_thread(peering.this_replica_works):
                enqueue(CACHE.keys())
        except Exception as e:  # noqa: BLE001 - a peering read failed: next pass
            log.warning("Safety-net pass skipped: %s: %s", type(e).__name__, str(e)[:300])
        await _sleep(stopped, settings.resync_seconds)


async def _sleep(stopped: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopped.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


async def _run(settings: Settings, stopped: asyncio.Event) -> None:
    tasks = [asyncio.create_task(_resync(settings, stopped), name="trtop-resync")]
    # Threads of their own: asyncio's default pool has cpu+4 threads (6 on 2 cores) and would cap the workers.
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=max(settings.workers, 1),
                                                    thread_name_prefix="trtop-reconcile")
    tasks += [asyncio.create_task(_worker(settings, stopped, threads), name=f"trtop-worker-{i}")
              for i in range(max(settings.workers, 1))]
    await stopped.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    threads.shutdown(wait=False, cancel_futures=True)


def start(settings: Settings) -> tuple[asyncio.Task[Any], asyncio.Event]:
    global QUEUE
    QUEUE = WorkQueue(base_delay=settings.retry_base_seconds, max_delay=settings.retry_max_seconds)
    stopped = asyncio.Event()
    return asyncio.create_task(_run(settings, stopped), name="trtop-workers"), stopped


def liveness(settings: Settings) -> dict[str, float]:
    """Seconds queued work has waited without progress; raises past the limit (the probe fails)."""
    limit = _LIVENESS_FACTOR * (settings.api_timeout_seconds + settings.store_timeout_seconds)
    age = QUEUE.progress_age()
    if age > limit:
        raise RuntimeError(f"the reconcile workers made no progress for {age:.0f}s (limit {limit:.0f}s)")
    return {"queued": float(len(QUEUE)), "stalledSeconds": round(age, 1)}
