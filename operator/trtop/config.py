"""Operator settings: one typed object read from ``TRTOP_*`` environment variables.

The Helm chart sets these variables; tests build ``Settings`` directly. Pure data plus
one constructor that reads the environment.
"""
from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trtop import versions
from trtop.api.fetch import FetchPolicy

_SHARING_GROUP = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
N = TypeVar("N", int, float)
T = TypeVar("T")


class SettingsError(ValueError):
    """A ``TRTOP_*`` setting the operator cannot run with: the message names the variable and what it takes, and
    ``trtop operator`` prints it as one line and exits 2 (a platform team setting the environment by hand gets that,
    not a traceback of ``int()``)."""


@dataclass(frozen=True)
class Settings:
    # Namespaces to watch; empty = the whole cluster (the chart's namespaced mode fills it).
    namespaces: tuple[str, ...] = ()
    # Where the operator itself reads engine records (a path where the store PVC is mounted, or s3://...).
    store_uri: str = "/var/lib/trtop/engines"
    # How build Jobs and serving pods reach the same store: a PVC name mounted at store_mount_path,
    # or (when empty) store_uri is passed through as is (s3://...) with credentials from store_secret.
    store_pvc: str = ""
    store_mount_path: str = "/var/lib/trtop/engines"
    store_secret: str = ""  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL
    converter_image: str = versions.CONVERTER_IMAGE
    converter_cpu_image: str = versions.CONVERTER_CPU_IMAGE  # build Jobs of the cpu target
    server_image: str = versions.SERVER_IMAGE
    server_cpu_image: str = versions.SERVER_CPU_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # TensorRT version of the converter image: part of every GPU engine key, so an upgrade rebuilds.
    tensorrt_version: str = versions.TENSORRT_VERSION
    onnxruntime_version: str = versions.ONNXRUNTIME_VERSION
    # Service account for build Jobs and serving pods (empty: the namespace default).
    workload_service_account: str = ""
    # Seconds between autoscaler decisions, and an optional Prometheus to read load from.
    autoscale_interval_seconds: float = 15.0
    prometheus_url: str = ""
    # The way back from zero (scaling.minReplicas 0 with mode builtin): a PromQL query of the load waiting in front
    # of a ModelDeployment scaled to zero (a gateway's or a queue's), asked of prometheus_url, with $namespace and
    # $name standing for the object's. The platform's to write: a tenant's query could read any team's series.
    # Empty: minReplicas 0 needs mode external (KEDA). TRTOP_WAKE_QUERY.
    wake_query: str = ""
    # Address and port of the operator's own /metrics (the chart's probes use kopf's :8081/healthz).
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8080
    # A node NotReady or cordoned for less than this still counts for the targets it serves, so
    # a brief outage or a drain-and-return neither narrows serving nor rolls the pods twice.
    node_grace_seconds: float = 300.0
    # Where serving capacity goes first (docs/autoscaling.md, "Serving units"): GPU products or
    # compute capabilities, most preferred first ("NVIDIA-L4,9.0"); unnamed ones come after,
    # fastest first. Empty: the fastest architecture (by verified throughput) that has free GPUs.
    placement_preference: tuple[str, ...] = ()
    # Seconds between safety-net passes over every ModelDeployment (watches trigger the rest);
    # TRTOP_RECONCILE_INTERVAL_SECONDS.
    resync_seconds: float = 300.0
    # Timeout of one Kubernetes API call and of one engine store read, in seconds.
    api_timeout_seconds: float = 30.0
    store_timeout_seconds: float = 10.0
    # Concurrent reconciles (each mostly waits on the API server: at N=300 on a loaded API
    # server 4 workers spent 3 s per reconcile and kept one core 15% busy); retry delays of a
    # failing object grow from base to max (seconds).
    workers: int = 16
    # A change of a child (build Job, Deployment, Service) queues its ModelDeployment this many
    # seconds later, so a burst (4 Jobs created, a rollout's status updates) is one reconcile and
    # one status write; spec and node changes are queued at once. TRTOP_COALESCE_SECONDS.
    coalesce_seconds: float = 2.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    # Extra env for workloads (chart workloads.env: a proxy, a store endpoint, tuning variables).
    workload_env: Mapping[str, str] = field(default_factory=dict)
    # Engines live under <store>/<scope>/<key>/ and the scope is part of every key: by default
    # the scope is the namespace. Namespaces named together in one group here (group name ->
    # namespaces) trust each other: they share one scope ("shared.<group>") and so reuse each
    # other's engines, and a build in one can publish engines the others serve. Risky: see
    # docs/install.md ("Sharing engines across namespaces").
    store_sharing: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Secret with read-only store credentials for serving pods ("" = they get store_secret).
    store_read_secret: str = ""
    # What build Jobs may fetch (schemes, hosts, private networks, byte caps, deadline): passed to
    # every build Job as TRTOP_FETCH_POLICY; read from TRTOP_FETCH_SCHEMES, TRTOP_FETCH_HOSTS,
    # TRTOP_FETCH_PRIVATE_NETWORKS, TRTOP_FETCH_MAX_BYTES, ... (trtop.api.fetch.FetchPolicy).
    fetch_policy: FetchPolicy = FetchPolicy()
    # Images a ModelDeployment may pick (engine.builderImage, serving.image): exact references or
    # prefixes ending in "*" ("registry.example.com/ml/*"). Empty: only the operator's own images.
    allowed_images: tuple[str, ...] = ()
    # sizeLimit of the /tmp emptyDir of build Jobs (the model's private copy, unpacked archives, the built engine)
    # and of serving pods (the fetched engine).
    build_tmp_size: str = "48Gi"
    serving_tmp_size: str = "16Gi"
    # Engine garbage collection: seconds between rounds (0 = off; the chart turns it on) and how
    # long an engine must have been unreferenced (and published) before it is deleted.
    gc_interval_seconds: float = 0.0
    gc_grace_seconds: float = 86400.0

    def __post_init__(self) -> None:
        if self.wake_query:
            if not self.prometheus_url:
                raise SettingsError("TRTOP_WAKE_QUERY is asked of Prometheus: set TRTOP_PROMETHEUS_URL too")
            _as_setting(wake_query_for, self.wake_query, "namespace", "name")  # an unknown placeholder fails here
        seen: dict[str, str] = {}
        for group, members in self.store_sharing.items():
            if not _SHARING_GROUP.match(group):
                raise SettingsError(f"TRTOP_STORE_SHARING: group {group!r} must be a DNS label (a-z, 0-9, '-')")
            for ns in members:
                if ns in seen:
                    raise SettingsError(f"TRTOP_STORE_SHARING: namespace {ns!r} is in two groups ({seen[ns]}, {group})")
                seen[ns] = group
        if self.retry_max_seconds < self.retry_base_seconds:
            raise SettingsError(f"TRTOP_RETRY_MAX_SECONDS ({self.retry_max_seconds:g}) is below "
                                f"TRTOP_RETRY_BASE_SECONDS ({self.retry_base_seconds:g})")

    def store_scope(self, namespace: str) -> str:
        """The store scope of a namespace: its own name, or ``shared.<group>`` for a sharing group.

        A namespace name is a DNS label (no dots), so a group's scope never equals a namespace.
        """
        for group, members in self.store_sharing.items():
            if namespace in members:
                return f"shared.{group}"
        return namespace

    def store_peers(self, namespace: str) -> tuple[str, ...]:
        """The namespaces whose engines ``namespace`` shares (its sharing group, itself first), or itself alone:
        one build Job of an engine key serves them all."""
        for members in self.store_sharing.values():
            if namespace in members:
                return (namespace, *sorted(set(members) - {namespace}))
        return (namespace,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        extra = {k[len("TRTOP_WORKLOAD_ENV_"):]: v for k, v in e.items() if k.startswith("TRTOP_WORKLOAD_ENV_")}
        return cls(
            namespaces=tuple(n for n in e.get("TRTOP_NAMESPACES", "").replace(",", " ").split() if n),
            store_uri=e.get("TRTOP_STORE_URI", d.store_uri),
            store_pvc=e.get("TRTOP_STORE_PVC", d.store_pvc),
            store_mount_path=e.get("TRTOP_STORE_MOUNT_PATH", d.store_mount_path),
            store_secret=e.get("TRTOP_STORE_SECRET", d.store_secret),
            converter_image=e.get("TRTOP_CONVERTER_IMAGE", d.converter_image),
            converter_cpu_image=e.get("TRTOP_CONVERTER_CPU_IMAGE", d.converter_cpu_image),
            server_image=e.get("TRTOP_SERVER_IMAGE", d.server_image),
            server_cpu_image=e.get("TRTOP_SERVER_CPU_IMAGE", d.server_cpu_image),
            image_pull_policy=e.get("TRTOP_IMAGE_PULL_POLICY", d.image_pull_policy),
            tensorrt_version=e.get("TRTOP_TENSORRT_VERSION", d.tensorrt_version),
            onnxruntime_version=e.get("TRTOP_ONNXRUNTIME_VERSION", d.onnxruntime_version),
            workload_service_account=e.get("TRTOP_WORKLOAD_SERVICE_ACCOUNT", d.workload_service_account),
            autoscale_interval_seconds=_seconds(e, "TRTOP_AUTOSCALE_INTERVAL_SECONDS", d.autoscale_interval_seconds,
                                                zero=False),
            prometheus_url=e.get("TRTOP_PROMETHEUS_URL", d.prometheus_url),
            wake_query=e.get("TRTOP_WAKE_QUERY", d.wake_query).strip(),
            metrics_host=e.get("TRTOP_METRICS_HOST", d.metrics_host),
            metrics_port=_integer(e, "TRTOP_METRICS_PORT", d.metrics_port, 0, 65535),  # 0: no /metrics
            node_grace_seconds=_seconds(e, "TRTOP_NODE_GRACE_SECONDS", d.node_grace_seconds),
            placement_preference=tuple(
                p for p in e.get("TRTOP_PLACEMENT_PREFERENCE", "").replace(",", " ").split() if p),
            resync_seconds=_seconds(e, "TRTOP_RECONCILE_INTERVAL_SECONDS", d.resync_seconds, zero=False),
            api_timeout_seconds=_seconds(e, "TRTOP_API_TIMEOUT_SECONDS", d.api_timeout_seconds, zero=False),
            store_timeout_seconds=_seconds(e, "TRTOP_STORE_TIMEOUT_SECONDS", d.store_timeout_seconds, zero=False),
            workers=_integer(e, "TRTOP_WORKERS", d.workers, 1, 1024),
            coalesce_seconds=_seconds(e, "TRTOP_COALESCE_SECONDS", d.coalesce_seconds),
            retry_base_seconds=_seconds(e, "TRTOP_RETRY_BASE_SECONDS", d.retry_base_seconds, zero=False),
            retry_max_seconds=_seconds(e, "TRTOP_RETRY_MAX_SECONDS", d.retry_max_seconds, zero=False),
            workload_env=extra,
            store_sharing=_as_setting(parse_sharing, e.get("TRTOP_STORE_SHARING", "")),
            store_read_secret=e.get("TRTOP_STORE_READ_SECRET", d.store_read_secret),
            fetch_policy=_as_setting(FetchPolicy.from_env, e),
            allowed_images=tuple(i for i in e.get("TRTOP_ALLOWED_IMAGES", "").replace(",", " ").split() if i),
            build_tmp_size=e.get("TRTOP_BUILD_TMP_SIZE", d.build_tmp_size),
            serving_tmp_size=e.get("TRTOP_SERVING_TMP_SIZE", d.serving_tmp_size),
            gc_interval_seconds=_seconds(e, "TRTOP_GC_INTERVAL_SECONDS", d.gc_interval_seconds),
            gc_grace_seconds=_seconds(e, "TRTOP_GC_GRACE_SECONDS", d.gc_grace_seconds),
        )


def _number(env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], what: str,
            fits: Callable[[N], bool], need: str) -> N:
    """``env[name]`` parsed, ``default`` when unset or empty; SettingsError naming the variable when it is not
    ``what`` or does not fit (``need`` says what does)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if not fits(value):
        raise SettingsError(f"{name}={raw!r}: {need}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, *, zero: bool = True) -> float:
    """A finite number of seconds, at least 0 (above 0 unless ``zero``)."""
    return _number(env, name, default, float, "a number of seconds",
                   lambda v: math.isfinite(v) and (v >= 0 if zero else v > 0),
                   f"seconds {'at least 0' if zero else 'above 0'} are needed")


def _integer(env: Mapping[str, str], name: str, default: int, least: int, most: int) -> int:
    return _number(env, name, default, int, "an integer", lambda v: least <= v <= most,
                   f"an integer from {least} to {most} is needed")


def _as_setting(parse: Callable[..., T], *args: Any) -> T:
    """``parse(*args)`` with its ValueError as a SettingsError (its message already names the variable)."""
    try:
        return parse(*args)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def wake_query_for(template: str, namespace: str, name: str) -> str:
    """The wake query of one ModelDeployment: ``$namespace`` and ``$name`` replaced by its own, escaped as
    PromQL string contents (both are DNS names, so nothing changes; a template's ``$$`` is a ``$``).
    ValueError for any other placeholder."""
    def quoted(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    try:
        return string.Template(template).substitute(namespace=quoted(namespace), name=quoted(name))
    except (KeyError, ValueError) as e:
        raise ValueError(f"TRTOP_WAKE_QUERY: {template!r} has a placeholder other than $namespace and $name, or a "
                         f"lone '$' (write $$): {e}") from None


def parse_sharing(text: str) -> dict[str, tuple[str, ...]]:
    """``"ml=team-a,team-b;vision=team-c,team-d"`` -> ``{"ml": ("team-a", "team-b"), ...}``."""
    groups: dict[str, tuple[str, ...]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        group, sep, members = part.partition("=")
        if not sep:
            raise ValueError(f"TRTOP_STORE_SHARING: {part!r} is not GROUP=NAMESPACE,NAMESPACE")
        groups[group.strip()] = tuple(n.strip() for n in members.split(",") if n.strip())
    return groups
