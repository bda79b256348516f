"""Container probes (startup, readiness, liveness) against the pod's loopback address.

``httpGet`` and ``tcpSocket`` are checked for real; ``exec`` and ``grpc`` are not (a
process has no container to exec into) and count as passing. ``Prober`` keeps the
kubelet's counting: initialDelaySeconds, periodSeconds, successThreshold and
failureThreshold. Called by ``trtop_dev.localrunner.pod``.
"""
from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trtop_dev.localrunner.podspec import PodSpecError


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise PodSpecError("InvalidProbe", f"container {container.get('name')!r}: probe port {port!r} names no port")


def check(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str) -> tuple[bool, str]:
    """Run one probe; (passed, what failed). A probe naming no port fails, as on a kubelet."""
    try:
        return _check(probe, container, pod_ip)
    except PodSpecError as err:
        return False, str(err)


def _check(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str) -> tuple[bool, str]:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        get = probe["httpGet"]
        host = get.get("host") or pod_ip
        port = resolve_port(get.get("port", 80), container)
        path = get.get("path") or "/"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        conn: http.client.HTTPConnection
        if get.get("scheme", "HTTP").upper() == "HTTPS":  # like the kubelet: no certificate check
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "kube-probe/local-runner", **headers})
            code = conn.getresponse().status
        except (OSError, http.client.HTTPException) as err:
            return False, f"GET http://{host}:{port}{path}: {err}"
        finally:
            conn.close()
        return 200 <= code < 400, f"GET http://{host}:{port}{path}: HTTP {code}"
    if "tcpSocket" in probe:
        tcp = probe["tcpSocket"]
        host, port = tcp.get("host") or pod_ip, resolve_port(tcp["port"], container)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            return False, f"connect {host}:{port}: {err}"
        return True, ""
    return True, ""  # exec / grpc: not checkable here (docs/local-runner.md)


@dataclass
class Prober:
    """One probe of one running container, with the kubelet's thresholds."""

    probe: Mapping[str, Any]
    started: float  # monotonic time the container started
    passing: bool = False
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.probe.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.probe.get("periodSeconds", 10))

    def due(self, at: float) -> bool:
        return at >= self.next_at

    def record(self, ok: bool, error: str, at: float) -> None:
        """Count one result; ``passing`` flips after successThreshold / failureThreshold in a row."""
        self.next_at = at + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.probe.get("successThreshold", 1)):
                self.passing = True
        else:
            self.successes, self.failures, self.last_error = 0, self.failures + 1, error
            if self.failures >= int(self.probe.get("failureThreshold", 3)):
                self.passing = False

    @property
    def failed_out(self) -> bool:
        """failureThreshold failures in a row (what restarts a container for liveness/startup)."""
        return self.failures >= int(self.probe.get("failureThreshold", 3))
