"""Kubernetes clients for the operator: one ApiClient, typed APIs and a dynamic client for SSA.

Loads in-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, dynamic


@dataclass(frozen=True)
class Clients:
    api: client.ApiClient
    core: client.CoreV1Api
    apps: client.AppsV1Api
    batch: client.BatchV1Api
    custom: client.CustomObjectsApi
    dynamic: dynamic.DynamicClient


@functools.lru_cache(maxsize=1)
def get_clients() -> Clients:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.ApiClient()
    return Clients(api, client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api),
                   client.CustomObjectsApi(api), dynamic.DynamicClient(api))  # type: ignore[no-untyped-call]


def plain(obj: Any) -> Any:
    """A typed client object as the plain dict the API sent (camelCase keys): what trtop reasons on."""
    return get_clients().api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
