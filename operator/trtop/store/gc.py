"""Garbage collection of the engine store: delete engines nothing references any more.

An engine is referenced while a ModelDeployment of its scope names it in its status (the
engines of its current spec, the ones it serves, and ``rollout.keepPreviousEngines``
revisions' worth of previous ones), while a Deployment or a serving pod's engine set names
it, or while a build Job for it exists. An unreferenced engine is deleted only once it is
older than the grace period *and* (for the operator's loop) has been seen unreferenced for
the grace period, so a status that lags behind a build never loses an engine. Engines in
scopes with no live namespace are unreferenced too. Never deleted: anything a serving pod
names. Also swept: S3 upload folders of builds killed before their commit.

``references_from`` is pure (plain dicts in, sets out); ``Collector.sweep`` lists the
store, each call bounded by ``call_timeout`` (``bounded_call``): a hung mount or endpoint costs
a round its errors, never the GC loop for good. Used by the operator's GC loop
(``trtop.handlers.gc``) and ``trtop store gc``.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from trtop import names
from trtop.api.engine import EngineKey, is_engine_key
from trtop.config import Settings
from trtop.store import EngineStore, StoreError, StoreUnavailableError, is_scope_name, open_store, scoped_uri
from trtop.store.bounded import StoreTimeoutError, bounded_call

log = logging.getLogger(__name__)
References = dict[str, set[str]]  # scope -> engine keys
T = TypeVar("T")


def references_from(settings: Settings, model_deployments: Iterable[Mapping[str, Any]],
                    pods: Iterable[Mapping[str, Any]] = (), deployments: Iterable[Mapping[str, Any]] = (),
                    jobs: Iterable[Mapping[str, Any]] = ()) -> References:
    """Every engine key something still needs, by store scope (plain API dicts in)."""
    refs: References = defaultdict(set)

    def add(namespace: str, keys: Iterable[Any]) -> None:
        refs[settings.store_scope(namespace)].update(str(k) for k in keys if isinstance(k, str))

    for md in model_deployments:
        status = md.get("status") or {}
        ns = md["metadata"]["namespace"]
        add(ns, (e.get("key") for e in status.get("engines") or [] if isinstance(e, dict)))
        add(ns, status.get("servedEngines") or [])
        add(ns, status.get("previousEngines") or [])
    for d in deployments:
        keys = ((d["metadata"].get("annotations") or {}).get(names.ANNOTATION_ENGINE_KEYS) or "").split(",")
        add(d["metadata"]["namespace"], keys)
    for pod in pods:
        for container in (pod.get("spec") or {}).get("containers") or []:
            for env in container.get("env") or []:
                if env.get("name") == names.ENV_ENGINE_SET:
                    add(pod["metadata"]["namespace"], engine_set_keys(env.get("value") or ""))
    for job in jobs:
        add(job["metadata"]["namespace"], [(job["metadata"].get("labels") or {}).get(names.LABEL_ENGINE_KEY)])
    return dict(refs)


def engine_set_keys(text: str) -> list[str]:
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    entries = doc if isinstance(doc, list) else []
    return [e if isinstance(e, str) else str(e.get("key")) for e in entries if isinstance(e, (str, dict))]


@dataclass
class GcReport:
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (scope, key)
    waiting: list[tuple[str, str]] = field(default_factory=list)  # unreferenced, within the grace period
    kept: int = 0  # referenced
    swept_uploads: int = 0
    errors: list[str] = field(default_factory=list)


class Collector:
    """Deletes unreferenced engines after ``grace_seconds``; remembers when it first saw each unreferenced.
    Each store call gives up after ``call_timeout`` seconds (a StoreUnavailableError: that scope's error)."""

    def __init__(self, store_uri: str, grace_seconds: float, *, clock: Callable[[], float] = time.time,
                 require_seen_twice: bool = True, call_timeout: float = Settings.store_timeout_seconds) -> None:
        self.store_uri, self.grace, self.clock = store_uri, grace_seconds, clock
        self.require_seen_twice = require_seen_twice
        self.call_timeout = call_timeout
        self.unreferenced_since: dict[tuple[str, str], float] = {}

    def sweep(self, refs: Mapping[str, set[str]], *, dry_run: bool = False,
              scopes: Iterable[str] | None = None) -> GcReport:
        """One pass over ``scopes`` (default: every scope in the store)."""
        report = GcReport()
        now = self.clock()
        seen: set[tuple[str, str]] = set()
        if scopes is None:
            try:
                scopes = self._call(functools.partial(list_scopes, self.store_uri))
            except StoreError as exc:
                report.errors.append(f"listing the scopes: {exc}")
                return report
        for scope in sorted(scopes):
            store = open_store(scoped_uri(self.store_uri, scope))
            try:
                keys = self._call(store.list_keys)
            except StoreError as exc:
                report.errors.append(f"{scope}: {exc}")
                continue
            for key in keys:
                if key in refs.get(scope, set()):
                    report.kept += 1
                    continue
                seen.add((scope, key))
                first = self.unreferenced_since.setdefault((scope, key), now)
                old_enough = now - _created(store, key, now, self._call) >= self.grace
                long_enough = not self.require_seen_twice or now - first >= self.grace
                if not (old_enough and long_enough):
                    report.waiting.append((scope, key))
                    continue
                if not dry_run:
                    try:
                        self._call(functools.partial(store.delete, key))  # bound now: the loop moves on
                    except StoreError as exc:
                        report.errors.append(f"{scope}/{key}: {exc}")
                        continue
                    self.unreferenced_since.pop((scope, key), None)
                report.deleted.append((scope, key))
            if not dry_run:
                try:
                    report.swept_uploads += _sweep_uploads(store, now - max(self.grace, 86400.0), self._call)
                except StoreError as exc:
                    report.errors.append(f"{scope}: abandoned uploads: {exc}")
        for gone in set(self.unreferenced_since) - seen:  # referenced again, or deleted by someone else
            self.unreferenced_since.pop(gone, None)
        return report

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return bounded_call(self.store_uri, call, self.call_timeout, stuck_limit=STUCK_CALLS_PER_STORE,
                                name="trtop-gc-store")
        except StoreTimeoutError as e:
            raise StoreUnavailableError(f"engine store {self.store_uri}: {e}") from None


# GC calls the store one call at a time: one call stuck is the whole store stuck (``trtop.store.bounded``).
STUCK_CALLS_PER_STORE = 1


def list_scopes(uri: str) -> list[str]:
    """The scope folders at the root of a store (namespaces and shared.<group>)."""
    store = open_store(uri)
    from trtop.store.filesystem import FilesystemStore
    from trtop.store.s3 import S3Store

    if isinstance(store, FilesystemStore):
        root = store.root
        return sorted(p.name for p in root.iterdir() if p.is_dir() and is_scope_name(p.name)) if root.is_dir() else []
    if isinstance(store, S3Store):
        return [s for s in store.list_folders("") if is_scope_name(s)]
    return []


def _created(store: EngineStore, key: str, now: float, call: Callable[[Callable[[], Any]], Any]) -> float:
    """When the engine was published (its record's ``created``); ``now`` when unreadable (keep it)."""
    try:
        record = call(functools.partial(store.get_record, EngineKey(key)))
    except StoreError:
        return now
    if record is None or not record.created:
        return now
    try:
        return datetime.strptime(record.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return now


def _sweep_uploads(store: EngineStore, before: float, call: Callable[[Callable[[], Any]], Any]) -> int:
    """S3: upload folders under keys with no record, older than ``before`` (builds killed before the commit);
    each store call through ``call`` (``Collector._call``)."""
    from trtop.store.s3 import S3Store

    if not isinstance(store, S3Store):
        return 0
    swept = 0
    for key in call(functools.partial(store.list_folders, "")):
        engine = EngineKey(key)
        if (is_engine_key(key) and call(functools.partial(store.get_record, engine)) is None
                and call(functools.partial(store.newest_object, engine)) < before):
            call(functools.partial(store.delete, engine))
            swept += 1
    return swept


def describe(report: GcReport, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{verb} {scope}/{key}" for scope, key in report.deleted]
    lines += [f"unreferenced, within the grace period: {scope}/{key}" for scope, key in report.waiting]
    lines += [f"error: {e}" for e in report.errors]
    lines.append(f"{len(report.deleted)} {verb}, {len(report.waiting)} waiting, {report.kept} referenced"
                 + (f", {report.swept_uploads} abandoned uploads removed" if report.swept_uploads else ""))
    return "\n".join(lines)
