"""Engine garbage collection in the operator, and ``trtop store gc [--dry-run]``.

Every ``Settings.gc_interval_seconds`` the working replica gathers what references engines
(ModelDeployments' status, inference Deployments and pods, build Jobs) in the namespaces
it serves and lets ``trtop.store.gc.Collector`` delete the rest after the grace period.
A round whose listing fails deletes nothing. Each deleted engine is counted
(``trtop_operator_engines_collected_total``) and announced by an Event in its namespace.
A namespaced operator sweeps only the scopes of its namespaces. Every API call has the
operator's timeout and runs off the event loop (the peering read included), every store call
``Settings.store_timeout_seconds``, and a round that fails in any way (an API server that is
down or silent, a store that hangs) is logged and the next one runs.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import secrets
import sys
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from trtop import names
from trtop.config import Settings, SettingsError
from trtop.handlers import metrics
from trtop.handlers.facts import forget_record
from trtop.k8s import peering
from trtop.k8s.client import configure_timeout, get_clients, plain, timeout
from trtop.k8s.events import list_model_deployments
from trtop.store.gc import Collector, GcReport, References, describe, references_from

log = logging.getLogger(__name__)


def gather_references(settings: Settings) -> References:
    """What references engines now; raises on any listing failure (then nothing is deleted)."""
    c = get_clients()
    inference = f"{names.LABEL_COMPONENT}={names.COMPONENT_INFERENCE}"
    namespaces = settings.namespaces
    job_keys, limit = names.LABEL_ENGINE_KEY, timeout()
    if namespaces:
        pods = [p for ns in namespaces for p in plain(c.core.list_namespaced_pod(
            ns, label_selector=inference, _request_timeout=limit))["items"]]
        deployments = [d for ns in namespaces for d in plain(c.apps.list_namespaced_deployment(
            ns, label_selector=inference, _request_timeout=limit))["items"]]
        jobs = [j for ns in namespaces for j in plain(c.batch.list_namespaced_job(
            ns, label_selector=job_keys, _request_timeout=limit))["items"]]
    else:
        pods = plain(c.core.list_pod_for_all_namespaces(label_selector=inference, _request_timeout=limit))["items"]
        deployments = plain(c.apps.list_deployment_for_all_namespaces(
            label_selector=inference, _request_timeout=limit))["items"]
        jobs = plain(c.batch.list_job_for_all_namespaces(label_selector=job_keys, _request_timeout=limit))["items"]
    return references_from(settings, list_model_deployments(namespaces), pods, deployments, jobs)


def served_scopes(settings: Settings) -> list[str] | None:
    """The scopes a namespaced operator may sweep; None (every scope) for a cluster-wide one.

    A shared scope only when the operator serves every namespace of its group: it cannot see
    what the others reference.
    """
    if not settings.namespaces:
        return None
    served = set(settings.namespaces)
    return sorted({scope for scope in map(settings.store_scope, served)
                   if set(_namespaces_of(settings, scope)) <= served})


def gc_once(settings: Settings, collector: Collector, *, dry_run: bool = False) -> GcReport:
    report = collector.sweep(gather_references(settings), dry_run=dry_run, scopes=served_scopes(settings))
    if not dry_run:
        for scope, key in report.deleted:
            forget_record(scope, key)  # planned from the store again if it is wanted again
            metrics.ENGINES_COLLECTED.inc()
            log.info("Deleted engine %s of scope %s from %s: no ModelDeployment, Deployment, pod or Job "
                     "references it", key, scope, settings.store_uri)
            for ns in _namespaces_of(settings, scope):
                _post_namespace_event(ns, "EngineCollected",
                                      f"Deleted engine {key} from the engine store: nothing referenced it for "
                                      f"{collector.grace:.0f} s.")
    for error in report.errors:
        log.warning("Engine garbage collection: %s", error)
    return report


async def gc_forever(settings: Settings, stopped: asyncio.Event) -> None:
    collector = Collector(settings.store_uri, settings.gc_grace_seconds, call_timeout=settings.store_timeout_seconds)
    while not stopped.is_set():
        try:
            if await asyncio.to_thread(peering.this_replica_works):
                await asyncio.to_thread(gc_once, settings, collector)
        except Exception as e:  # noqa: BLE001 - a failed listing deletes nothing; try next round
            # The API server down or silent is expected now and then: one line. Anything else is a bug: its traceback.
            log.warning("Engine garbage collection round failed, nothing was deleted; the next round runs in %gs: "
                        "%s: %s", settings.gc_interval_seconds, type(e).__name__, str(e)[:300],
                        exc_info=not isinstance(e, (ApiException, HTTPError, OSError)))
        try:
            await asyncio.wait_for(stopped.wait(), timeout=settings.gc_interval_seconds)
        except asyncio.TimeoutError:
            pass


def start(settings: Settings) -> tuple[asyncio.Task[Any], asyncio.Event] | None:
    if settings.gc_interval_seconds <= 0:
        return None
    stopped = asyncio.Event()
    return asyncio.create_task(gc_forever(settings, stopped), name="trtop-gc"), stopped


def _namespaces_of(settings: Settings, scope: str) -> list[str]:
    if scope.startswith("shared."):
        return list(settings.store_sharing.get(scope[len("shared."):], ()))
    return [scope]


def _post_namespace_event(namespace: str, reason: str, message: str) -> None:
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    event: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"trtop-gc.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Namespace", "name": namespace},
        "type": "Normal", "reason": reason, "message": message[:1024], "source": {"component": names.APP_NAME},
        "reportingComponent": f"{names.GROUP}/operator", "reportingInstance": names.APP_NAME,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    try:
        get_clients().core.create_namespaced_event(namespace, event,  # type: ignore[arg-type]
                                                   _request_timeout=timeout())
    except Exception as e:  # noqa: BLE001 - best effort: the engine is gone already, the other Events still go out
        log.warning("Could not post Event %s in %s: %s", reason, namespace, e)


def main(argv: list[str]) -> int:
    """``trtop store gc [--dry-run] [--store URI] [--grace-seconds N]``: one collection, from outside."""
    parser = argparse.ArgumentParser(prog="trtop store", description="Engine store maintenance.")
    sub = parser.add_subparsers(dest="command", required=True)
    gc = sub.add_parser("gc", help="delete engines nothing references (after the grace period)")
    gc.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    gc.add_argument("--store", help="store URI (default: TRTOP_STORE_URI, as the operator's)")
    gc.add_argument("--grace-seconds", type=float, help="keep engines published less than this long ago "
                                                        "(default: TRTOP_GC_GRACE_SECONDS or one day)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"trtop store: {e}", file=sys.stderr)
        return 2
    settings = dataclasses.replace(settings, store_uri=args.store or settings.store_uri)
    configure_timeout(settings.api_timeout_seconds)
    grace = settings.gc_grace_seconds if args.grace_seconds is None else args.grace_seconds
    collector = Collector(settings.store_uri, grace, require_seen_twice=False,
                          call_timeout=settings.store_timeout_seconds)
    report = gc_once(settings, collector, dry_run=args.dry_run)
    print(describe(report, args.dry_run))
    return 1 if report.errors else 0
