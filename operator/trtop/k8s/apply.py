"""Server-side apply with field manager ``trtop``, and create-only for Jobs.

SSA makes re-applying the same manifest a no-op and leaves fields owned by others (an
HPA's replicas, a user's annotations) alone. Jobs are created, never updated (their
template is immutable); a 409 on create means our Job already exists: that is success.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from trtop import names
from trtop.k8s.client import get_clients, timeout

log = logging.getLogger(__name__)


def apply(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply ``manifest`` (force: trtop owns the fields it sets on its own objects).

    Only for objects this ModelDeployment controls: the planner never plans one of the same
    name that something else owns (it reports NotOwned instead).
    """
    c = get_clients()
    resource = c.dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    result = resource.server_side_apply(
        body=dict(manifest), name=manifest["metadata"]["name"], namespace=manifest["metadata"].get("namespace"),
        field_manager=names.FIELD_MANAGER, force_conflicts=True, _request_timeout=timeout(),
    )
    return result.to_dict()  # type: ignore[no-any-return]


def create_job(manifest: Mapping[str, Any]) -> bool:
    """Create a build Job. Returns False when it already exists (a restart, a repeated event)."""
    c = get_clients()
    try:
        c.batch.create_namespaced_job(manifest["metadata"]["namespace"], dict(manifest),  # type: ignore[arg-type]
                                      _request_timeout=timeout())
    except ApiException as e:
        if e.status == 409:
            log.debug("Job %s already exists", manifest["metadata"]["name"])
            return False
        raise
    return True


def delete_deployment(namespace: str, name: str, uid: str) -> bool:
    """Delete one Deployment, only if it is still the object ``uid`` (a preconditioned delete);
    its pods go with it (background propagation). False when it is gone already."""
    c = get_clients()
    try:
        c.apps.delete_namespaced_deployment(name, namespace, body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid) if uid else None, propagation_policy="Background"),
            _request_timeout=timeout())
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True
