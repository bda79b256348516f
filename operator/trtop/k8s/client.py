"""Kubernetes clients for the operator: one ApiClient, typed APIs and a dynamic client for SSA.

Loads in-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config. Every
call passes ``timeout()`` as ``_request_timeout``: no API call can hang a reconcile. A request
sent without one (the dynamic client's API discovery, which trtop does not call itself) gets
``timeout()`` too, so building the clients cannot hang start-up either. A request that timed
out is not sent again (``OnceOnTimeout``): a call that gets no answer fails after its timeout,
not after four of them.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from kubernetes import client, config, dynamic
from prometheus_client import Counter
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

# Every request the operator's client sends (kopf's watch streams are apart), by HTTP method.
API_REQUESTS = Counter("trtop_operator_api_requests_total", "Kubernetes API requests sent by trtop's client",
                       ["method", "resource"])
_RESOURCE = re.compile(r"/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([a-z]+)(?:/[^/?]+)?(/status|/scale)?")


@dataclass(frozen=True)
class Clients:
    api: client.ApiClient
    core: client.CoreV1Api
    apps: client.AppsV1Api
    batch: client.BatchV1Api
    custom: client.CustomObjectsApi
    dynamic: dynamic.DynamicClient


_TIMEOUT = [30.0]


def configure_timeout(seconds: float) -> None:
    """The (connect, read) limit of every API call (``TRTOP_API_TIMEOUT_SECONDS``)."""
    _TIMEOUT[0] = float(seconds)


def timeout() -> tuple[float, float]:
    return (min(_TIMEOUT[0], 10.0), _TIMEOUT[0])


class OnceOnTimeout(Retry):
    """urllib3's default retries (3, at once), less a request that timed out: that one's error is raised.

    The default sends a GET, PUT or DELETE that got no answer again 3 times, and a connect that timed
    out too: a silent API server held each call for 4 x its timeout. A timeout is the bound on waiting,
    so it is paid once. Failures that come back at once (connection refused, a pooled connection the
    server had closed) are still retried: they cost no waiting, and spare a reconcile a spurious error.
    """

    def increment(self, method: str | None = None, url: str | None = None, response: BaseHTTPResponse | None = None,
                  error: Exception | None = None, _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> Self:
        # NewConnectionError (refused, unresolvable) is a ConnectTimeoutError too, but came back at once.
        if isinstance(error, ReadTimeoutError) or (
                isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError)):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


@functools.lru_cache(maxsize=1)
def get_clients() -> Clients:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    # Room for every worker and parallel write (the default, 5 per CPU, drops connections
    # under load and each new one costs a TLS handshake).
    configuration.connection_pool_maxsize = 64
    configuration.retries = OnceOnTimeout(total=Retry.DEFAULT.total)
    api = client.ApiClient(configuration)
    rest = api.rest_client
    send = rest.request

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        found = _RESOURCE.search(url.split("?", 1)[0])
        API_REQUESTS.labels(method, "".join(g or "" for g in found.groups()) if found else "other").inc()
        kwargs["_request_timeout"] = kwargs.get("_request_timeout") or timeout()  # see the module docstring
        return send(method, url, *args, **kwargs)  # type: ignore[no-untyped-call]
    rest.request = counted  # type: ignore[method-assign]
    try:
        # Discovery: GET /version and /apis now, each group's resources when apply first needs them.
        discovered = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]
    except Exception as e:
        log.warning("Kubernetes API discovery at %s failed (%s: %s); each request gives up after %gs, and the "
                    "clients are built again on the next call", configuration.host, type(e).__name__,
                    str(e)[:300], _TIMEOUT[0])
        raise
    return Clients(api, client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api),
                   client.CustomObjectsApi(api), discovered)


def plain(obj: Any) -> Any:
    """A typed client object as the plain dict the API sent (camelCase keys): what trtop reasons on."""
    return get_clients().api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
