"""Should this replica work? kopf's peering rule, applied to trtop's own loops.

kopf pauses its watch handlers on a replica that sees a live peer of higher priority (or
of the same priority: then every one of them pauses). trtop's resync and autoscale loops
are plain asyncio tasks that kopf does not pause, so each round they read the same
peering object and apply the same rule. The peer identity is ``POD_ID`` (the chart sets it
to the pod name, which is what kopf uses too). A peering object that cannot be read (an
API error, a timeout, a refused connection) means "wait": the caller's next round reads again.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from trtop.k8s.client import get_clients, timeout

log = logging.getLogger(__name__)
KOPF_GROUP, KOPF_VERSION = "kopf.dev", "v1"


@dataclass(frozen=True)
class PeeringConfig:
    standalone: bool = True
    name: str = ""
    priority: int = 0
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide (ClusterKopfPeering)
    own_id: str | None = None


def should_work(peers: Mapping[str, Mapping[str, Any]], priority: int, own_id: str | None,
                now: dt.datetime) -> bool:
    """kopf's rule over one peering object's ``status`` (``{id: {priority, lifetime, lastseen}}``)."""
    live = []
    for ident, info in peers.items():
        try:
            seen = dt.datetime.fromisoformat(str(info["lastseen"]))
        except (KeyError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.timezone.utc)
        if seen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now:
            live.append((ident, int(info.get("priority", 0))))
    if own_id is not None:
        others = [p for ident, p in live if ident != own_id]
        return not any(p >= priority for p in others)
    # Without our own id we cannot tell ourselves apart: one peer at our priority is us.
    return not any(p > priority for _, p in live) and sum(1 for _, p in live if p == priority) <= 1


def allowed(config: PeeringConfig) -> bool:
    if config.standalone or not config.name:
        return True
    now = dt.datetime.now(dt.timezone.utc)
    objs: list[Any]
    try:
        custom = get_clients().custom
        if not config.namespaces:
            objs = [custom.get_cluster_custom_object(KOPF_GROUP, KOPF_VERSION, "clusterkopfpeerings", config.name,
                                                     _request_timeout=timeout())]
        else:
            objs = [custom.get_namespaced_custom_object(KOPF_GROUP, KOPF_VERSION, ns, "kopfpeerings", config.name,
                                                        _request_timeout=timeout())
                    for ns in config.namespaces]
    except ApiException as e:
        log.warning("Cannot read the peering object %s (%s): this replica waits", config.name, e.reason)
        return False
    except (HTTPError, OSError) as e:  # timeouts, refused or dropped connections (urllib3's own errors)
        log.warning("Cannot reach the API server for the peering object %s (%s: %s): this replica waits",
                    config.name, type(e).__name__, str(e)[:300])
        return False
    return all(should_work(o.get("status") or {}, config.priority, config.own_id, now) for o in objs)


CONFIG: list[PeeringConfig] = [PeeringConfig()]


def configure(*, standalone: bool, name: str, priority: int, namespaces: tuple[str, ...]) -> None:
    CONFIG[0] = PeeringConfig(standalone, name, priority, namespaces, os.environ.get("POD_ID"))


def this_replica_works() -> bool:
    return allowed(CONFIG[0])
