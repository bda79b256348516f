"""The builtin autoscaler's shell: read load, ``decide`` (pure), apply through reconcile.

Runs as one loop per operator (no finalizer). For each ModelDeployment with
``scaling.mode: builtin`` and serving units (all read from the watch-fed cache), every
``TRTOP_AUTOSCALE_INTERVAL_SECONDS``: read every serving pod's load (its ``/metrics``, or
Prometheus when ``TRTOP_PROMETHEUS_URL`` is set) and, for one scaled to zero that may be, the load waiting in front
of it (the platform's ``TRTOP_WAKE_QUERY``), cap by the throughput the units' GPUs
can reach (per architecture: free GPUs x what one of its pods carries), decide like the
HPA in capacity units (``trtop.planning.capacity``), and when the count changes, call the
reconcile shell with it (which splits it over the units) and post an Event with the
readings behind it. Decisions live in memory; after a restart ``status.desiredReplicas``
is the starting point (see docs/autoscaling.md).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from trtop.api.engine import EngineKey
from trtop.api.errors import SpecError
from trtop.api.fetch import redact
from trtop.api.spec import parse_spec
from trtop.api.targets import Target
from trtop.autoscale import Decision, Observation, ScalingHistory, decide, policy_from_spec
from trtop.autoscale.capacity import throughput_capacity
from trtop.autoscale.decision import clamp_metric
from trtop.autoscale.load import LoadSource, PrometheusError, PrometheusReader, endpoint_from_pod, open_load_source
from trtop.config import Settings, wake_query_for
from trtop.handlers import metrics
from trtop.handlers.modeldeployment import reconcile
from trtop.handlers.scale_state import STATES, ScaleState
from trtop.k8s import peering
from trtop.k8s.cache import CACHE
from trtop.k8s.events import patch_status, post_event
from trtop.planning.facts import NodeFact

log = logging.getLogger(__name__)


# Objects autoscaled at once (the HPA controller runs 5 workers): one whose pods never answer
# costs the others nothing, and a round of many such objects takes a few timeouts, not one each.
CONCURRENT_OBJECTS = 8


async def autoscale_once(settings: Settings, source: LoadSource, wake: PrometheusReader | None = None) -> None:
    if not await asyncio.to_thread(peering.this_replica_works):
        return
    nodes = CACHE.nodes()
    workers = asyncio.Semaphore(CONCURRENT_OBJECTS)

    async def one(body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        async with workers:
            try:
                await _autoscale_one(body, settings, source, nodes, wake)
            except Exception as e:  # noqa: BLE001 - one object must never stop the others' autoscaling
                log.warning("Autoscaling %s/%s skipped this round: %s: %s", meta.get("namespace"),
                            meta.get("name"), type(e).__name__, str(e)[:300])

    bodies = (CACHE.model_deployment(key) for key in CACHE.keys())
    await asyncio.gather(*(one(body) for body in bodies if body is not None))


async def _autoscale_one(body: dict[str, Any], settings: Settings, source: LoadSource,
                         nodes: tuple[NodeFact, ...], wake: PrometheusReader | None = None) -> None:
    meta = body["metadata"]
    try:
        spec = parse_spec(body.get("spec") or {})
    except SpecError:
        return  # its status says InvalidSpec (the reconcile shell wrote it)
    if spec.scaling.mode != "builtin" or meta.get("deletionTimestamp"):
        STATES.pop(meta["uid"], None)
        return
    units = CACHE.units(meta["uid"])
    if not units:
        return
    pods = CACHE.serving_pods((meta["namespace"], meta["name"]))
    endpoints = [e for e in (endpoint_from_pod(p, spec.serving.port) for p in pods) if e is not None]
    reading = await source.read(endpoints, spec.scaling.metric)
    still = CACHE.model_deployment((meta["namespace"], meta["name"]))
    if still is None or still["metadata"].get("uid") != meta["uid"]:
        return  # deleted while its load was read: a decision now would outlive it in STATES
    status = body.get("status") or {}
    current = status.get("desiredReplicas")
    if isinstance(current, bool) or not isinstance(current, int) or current < 0:
        current = sum(u.replicas for u in units)
    serving = []
    for entry in status.get("units") or []:
        try:
            if entry.get("state") == "Serving":
                serving.append((Target.parse(str(entry["target"])), float(entry["capacityPerReplica"]),
                                int(entry["replicas"])))
        except (ValueError, KeyError, AttributeError, TypeError):
            continue  # a status entry someone else wrote: not ours to trust
    gpu = any(not t.is_cpu for t, _, _ in serving)
    capacity = throughput_capacity(nodes, serving, gpus_per_replica=1 if gpu else 0,
                                   full=CACHE.full_targets(meta["namespace"])) if serving else None
    errors = reading.errors
    waiting = 0.0
    state = STATES.setdefault(meta["uid"], ScaleState(ScalingHistory()))
    if not (current == 0 and spec.scaling.min_replicas == 0):
        state.wake_failing = False  # not at zero: a later stay there that cannot wake is a new streak
    elif wake is not None and settings.wake_query:
        try:
            found = await wake.query_scalar(wake_query_for(settings.wake_query, meta["namespace"], meta["name"]))
            waiting = clamp_metric(found or 0.0)  # NaN (a 0/0 in the query) is nothing waiting, not a wake-up
            state.wake_failing = False
        except PrometheusError as e:  # it stays at zero this round; the next round asks again
            errors += (f"wake query: {e}",)
            if not state.wake_failing:  # the object's owner sees why it does not wake, once per streak
                state.wake_failing = True
                await asyncio.to_thread(
                    post_event, body, "Warning", "WakeQueryFailed",
                    redact(f"scaled to zero, and the operator's wake query failed, so load waiting cannot start a "
                           f"replica while this lasts (asked again every {settings.autoscale_interval_seconds:g} s;"
                           f" the platform's operator.wakeQuery / operator.prometheusUrl): {e}"))
    observation = Observation(at=time.time(), current_replicas=current, pods=reading.samples,
                              schedulable_capacity=capacity, pending_load=waiting)
    decision, state.history = decide(policy_from_spec(spec.scaling), observation, state.history)
    state.desired, state.limit = decision.desired_replicas, decision.capacity_message if decision.capped else ""
    await asyncio.to_thread(_apply, body, decision, errors, settings)


def _forget(uid: str, _engine_keys: tuple[EngineKey, ...]) -> None:
    STATES.pop(uid, None)  # a deleted object's decisions go with it


CACHE.when_forgotten(_forget)


def _apply(body: dict[str, Any], decision: Decision, errors: tuple[str, ...], settings: Settings) -> None:
    status = body.get("status") or {}
    reading = {"metric": decision.metric_value, "pods": decision.metric_pods, "missing": decision.missing_pods,
               "desired": decision.desired_replicas, "reason": decision.reason,
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    state = STATES.get(str(body["metadata"].get("uid")))
    if decision.changed:
        outcome = reconcile(body, settings, autoscaled=decision.desired_replicas,
                            scaling_limit=decision.capacity_message if decision.capped else "",
                            extra_status={"lastScale": reading,
                                          "lastMetric": {k: v for k, v in reading.items() if k != "reason"}})
        message = f"replicas {decision.current_replicas} -> {decision.desired_replicas}: {decision.reason}"
        if outcome.failure is None:
            _announce(body, decision.direction, message)
            if state is not None:
                state.unannounced = None
        else:
            # The decision stands (STATES) and the next reconcile applies it, whatever stopped this one (a status
            # write that lost a race: the objects may be scaled already). Lost here, the change went unannounced:
            # no Event, no lastScale, and the next round saw no change to tell (a CI run's scale to zero).
            if state is not None:
                state.unannounced = (decision.direction, message, reading)
            log.info("%s/%s: scaling to %d replica(s) did not finish (%s); the next reconcile applies it",
                     body["metadata"]["namespace"], body["metadata"]["name"], decision.desired_replicas,
                     outcome.failure.message[:300])
    else:
        update: dict[str, Any] = {}
        if state is not None and state.unannounced is not None:
            direction, message, scaled = state.unannounced
            state.unannounced = None
            if scaled["desired"] == decision.desired_replicas:  # the status shows it now: told once
                _announce(body, direction, message)
                update["lastScale"] = scaled
        if decision.capped and status.get("lastCapped") != decision.capacity_message:
            post_event(body, "Warning", "ScalingLimited", decision.capacity_message)
            update["lastCapped"] = decision.capacity_message
        # The last reading, like an HPA's currentMetrics: written only when the figures move.
        last = status.get("lastMetric") or {}
        if (last.get("metric"), last.get("pods"), last.get("desired")) != (
                reading["metric"], reading["pods"], reading["desired"]):
            update["lastMetric"] = {k: v for k, v in reading.items() if k != "reason"}
        if update:
            CACHE.remember_status_write(patch_status(body, update))
    if errors:
        log.info("%s/%s: load readings missing: %s", body["metadata"]["namespace"], body["metadata"]["name"],
                 "; ".join(errors)[:500])


def _announce(body: dict[str, Any], direction: str, message: str) -> None:
    metrics.SCALE_CHANGES.labels(direction).inc()
    post_event(body, "Normal", "Scaled" + direction.capitalize(), message)


async def autoscale_forever(settings: Settings, stopped: asyncio.Event) -> None:
    source = open_load_source(settings.prometheus_url)
    # Settings refuses a wake query without a Prometheus URL, so the source is a PrometheusReader then.
    wake = source if settings.wake_query and isinstance(source, PrometheusReader) else None
    while not stopped.is_set():
        try:
            await autoscale_once(settings, source, wake)
        except Exception as e:  # noqa: BLE001 - a failed round (API or metrics down) is retried next round
            log.warning("Autoscale round failed (retried in %gs): %s: %s", settings.autoscale_interval_seconds,
                        type(e).__name__, str(e)[:300])
        try:
            await asyncio.wait_for(stopped.wait(), timeout=settings.autoscale_interval_seconds)
        except asyncio.TimeoutError:
            pass


def start(settings: Settings) -> tuple[asyncio.Task[Any], asyncio.Event]:
    stopped = asyncio.Event()
    return asyncio.create_task(autoscale_forever(settings, stopped), name="trtop-autoscale"), stopped
