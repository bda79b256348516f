"""The engine store: content-addressed engines, published atomically, read by everyone.

Layout (both backends): ``<root>/<scope>/<key>/engine.json`` plus the artifact named in
it, and ``<root>/<scope>/_timing-caches/<target-slug>.cache`` for TensorRT timing caches
(device specific). The scope is the namespace (or ``shared.<group>`` for namespaces that
trust each other, ``Settings.store_scope``); workloads get only their scope
(``scoped_uri``: a sub-path of the claim, or of the bucket prefix), so a tenant's build
can neither read nor write another tenant's engines. A store object opened on a scoped
URI sees ``<key>/...`` below it and nothing else.

A key's engine is visible only once complete (``engine.json`` is the commit, written
last and never over an existing one; a build writes only inside its key's folder), so a
killed build leaves nothing half-written behind, and two builds of one key cannot corrupt each other: the first complete publish wins and is never
overwritten. Records are read with ``trtop.api.engine.parse_record`` (strict) and the
artifact's bytes are checked against the record's sha256 before a fetched copy is used.

Users: the converter (publish), the operator (is the engine there? read its record),
the server (fetch the artifact for its GPU). Backends are picked by URI scheme from
``BACKENDS`` (``file://`` or a plain path for a PVC mount; ``s3://bucket/prefix`` for any
S3-compatible service, endpoint from ``AWS_ENDPOINT_URL``).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Protocol

from trtop.api.engine import EngineKey, EngineRecord


class StoreError(Exception):
    """A store operation failed; the message names the store and what to check."""


class EngineNotFoundError(StoreError, LookupError):
    """``fetch`` of a key that has no complete (published) engine."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or refused us (network, credentials): often transient."""


class InvalidRecordError(StoreError):
    """A key's ``engine.json`` is not a valid record (or names another key): the engine is not used."""


_SCOPE = re.compile(r"^(shared\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def is_scope_name(name: str) -> bool:
    """A namespace name (DNS label) or ``shared.<group>``: never ``.staging``, ``_timing-caches``, ``..``."""
    return bool(_SCOPE.match(name))


def scoped_uri(uri: str, scope: str) -> str:
    """The store URI of one scope: ``s3://b/p`` -> ``s3://b/p/team-a``, ``/data/e`` -> ``/data/e/team-a``."""
    if not is_scope_name(scope):
        raise ValueError(f"store scope {scope!r} is not a namespace name or shared.<group>")
    return f"{uri.rstrip('/')}/{scope}"


class EngineStore(Protocol):
    uri: str

    def get_record(self, key: EngineKey) -> EngineRecord | None:
        """The published record of ``key``, or None when the key has no complete engine."""

    def publish(self, key: EngineKey, folder: Path) -> bool:
        """Atomically publish the folder (engine.json + artifact) as ``key``.

        Returns False (and changes nothing) when ``key`` was already published.
        """

    def fetch(self, key: EngineKey, dest: Path) -> Path:
        """Copy the published folder of ``key`` under ``dest`` and return the local folder.

        Raises ``EngineNotFoundError`` when ``key`` is not published.
        """

    def list_keys(self) -> list[EngineKey]:
        """Keys with a complete engine."""

    def delete(self, key: EngineKey) -> None:
        """Remove a published engine (garbage collection of engines no spec references)."""

    def get_blob(self, name: str) -> bytes | None:
        """A side file such as a timing cache (``_timing-caches/<slug>.cache``)."""

    def put_blob(self, name: str, data: bytes) -> None:
        """Write a side file atomically (last writer wins)."""


# scheme -> "module:Class"; the modules import their heavy dependencies lazily.
BACKENDS: dict[str, str] = {
    "file": "trtop.store.filesystem:FilesystemStore",
    "s3": "trtop.store.s3:S3Store",
}


def open_store(uri: str) -> EngineStore:
    """The store for a URI (``/data/engines``, ``file:///data/engines``, ``s3://bucket/prefix``)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    try:
        target = BACKENDS[scheme]
    except KeyError:
        raise ValueError(f"engine store URI {uri!r}: scheme {scheme!r} is not one of {sorted(BACKENDS)}") from None
    module, _, cls = target.partition(":")
    store: EngineStore = getattr(importlib.import_module(module), cls)(uri)
    return store
