"""Post Kubernetes Events about a ModelDeployment (what `kubectl describe md` shows)."""
from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from trtop import names
from trtop.k8s.client import get_clients

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
        get_clients().core.create_namespaced_event(meta["namespace"], event)  # type: ignore[arg-type]
    except (ApiException, ValueError) as e:
        log.warning("Could not post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], e)


def patch_status(body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Merge-patch the status subresource (used outside kopf handlers, by the resync loop)."""
    meta = body["metadata"]
    get_clients().custom.patch_namespaced_custom_object_status(
        names.GROUP, names.VERSION, meta["namespace"], names.PLURAL, meta["name"], {"status": dict(status)})


def list_model_deployments(namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    custom = get_clients().custom
    if not namespaces:
        listed: Any = custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.PLURAL)
        return list(listed["items"])
    out: list[dict[str, Any]] = []
    for ns in namespaces:
        page: Any = custom.list_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL)
        out += page["items"]
    return out
