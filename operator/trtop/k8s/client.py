"""Kubernetes clients for the operator: one ApiClient, typed APIs and a dynamic client for SSA.

Loads in-cluster config when running in a pod, else KUBECONFIG / ~/.kube/config.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

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
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    return Clients(api, client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api),
                   client.CustomObjectsApi(api), dynamic.DynamicClient(api))
