"""Post Kubernetes Events about a ModelDeployment (what `kubectl describe md` shows)."""
from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Mapping
from typing import Any


from trtop import names
from trtop.k8s.client import get_clients, timeout

log = logging.getLogger(__name__)


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Best effort: an Event that cannot be posted is logged, never fails a reconcile."""
    meta = body["metadata"]
    now = dt.datetime.now(dt.timezone.utc)
    event: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": names.APP_NAME}, "reportingComponent": f"{names.GROUP}/operator",
        "reportingInstance": names.APP_NAME,
        "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
    }
    try:
        get_clients().core.create_namespaced_event(meta["namespace"], event,  # type: ignore[arg-type]
                                                   _request_timeout=timeout())
    except Exception as e:  # noqa: BLE001 - API errors, timeouts, connection errors: an Event is best effort
        log.warning("Could not post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], e)


def patch_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """Merge-patch the status subresource, only if the object is still the one we read.

    The body's resourceVersion travels with the patch: a 409 means the object changed since
    (a new spec), and the caller plans again from the new one instead of writing a stale status.
    """
    meta = body["metadata"]
    patch: dict[str, Any] = {"status": dict(status)}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    result: Any = get_clients().custom.patch_namespaced_custom_object_status(
        names.GROUP, names.VERSION, meta["namespace"], names.PLURAL, meta["name"], patch,
        _request_timeout=timeout())
    return dict(result)


def list_model_deployments(namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    custom = get_clients().custom
    if not namespaces:
        listed: Any = custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.PLURAL,
                                                        _request_timeout=timeout())
        return list(listed["items"])
    out: list[dict[str, Any]] = []
    for ns in namespaces:
        page: Any = custom.list_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL,
                                                         _request_timeout=timeout())
        out += page["items"]
    return out
