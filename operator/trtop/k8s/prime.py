"""Fill the cache with one list per kind before the watches start (called at start-up).

kopf starts its watch streams only after the start-up handlers finish, so priming here
means no reconcile ever reads a half-listed cluster (no node yet = "no targets"). Lists
are read as raw JSON (no model objects), once per process.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from trtop import names
from trtop.k8s.cache import CACHE
from trtop.k8s.client import get_clients, timeout

_OURS = f"{names.LABEL_MANAGED_BY}={names.APP_NAME}"
_BUILDS = f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}"


def _items(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    response = call(*args, _preload_content=False, _request_timeout=timeout(), **kwargs)
    return list(json.loads(response.data)["items"])


def prime_cache(namespaces: tuple[str, ...]) -> None:
    c = get_clients()
    for node in _items(c.core.list_node):
        CACHE.on_node("ADDED", node)
    scopes: list[str | None] = list(namespaces) or [None]
    for ns in scopes:
        def listed(all_ns: Callable[..., Any], one_ns: Callable[..., Any], **kw: Any) -> list[dict[str, Any]]:
            return _items(all_ns, **kw) if ns is None else _items(one_ns, ns, **kw)
        for pod in listed(c.core.list_pod_for_all_namespaces, c.core.list_namespaced_pod):
            CACHE.on_pod("ADDED", pod)
        mds = (_items(c.custom.list_cluster_custom_object, names.GROUP, names.VERSION, names.PLURAL) if ns is None
               else _items(c.custom.list_namespaced_custom_object, names.GROUP, names.VERSION, ns, names.PLURAL))
        for md in mds:
            CACHE.on_model_deployment("ADDED", md)
        for job in listed(c.batch.list_job_for_all_namespaces, c.batch.list_namespaced_job, label_selector=_BUILDS):
            CACHE.on_job("ADDED", job)
        for d in listed(c.apps.list_deployment_for_all_namespaces, c.apps.list_namespaced_deployment,
                        label_selector=_OURS):
            CACHE.on_deployment("ADDED", d)
        for s in listed(c.core.list_service_for_all_namespaces, c.core.list_namespaced_service,
                        label_selector=_OURS):
            CACHE.on_service("ADDED", s)
