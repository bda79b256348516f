"""A small JSON-over-HTTPS client for the few API calls the local runner makes.

The runner plays the kubelet, which speaks to the API server with plain REST verbs on
raw objects (pods/status, nodes/status, leases, watches); plain dicts and urllib3 keep
that visible. Credentials come from a kubeconfig through ``kubernetes.config`` (client
certificates or a token). Called by ``node``, ``volumes`` and ``runner``.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is valid YAML
FIELD_MANAGER = "trtop-local-runner"


class KubeError(RuntimeError):
    """An API call answered with an error status; ``status`` is the HTTP code (0: no answer)."""

    def __init__(self, method: str, path: str, status: int, text: str) -> None:
        detail = text
        try:
            detail = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            pass
        super().__init__(f"{method} {path} failed ({status or 'no answer'}): {detail}")
        self.status = status


def pod_path(namespace: str, name: str, sub: str = "") -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}" + (f"/{sub}" if sub else "")


class Kube:
    """API calls against the cluster of one kubeconfig (thread-safe: urllib3 pools connections)."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        except (k8s_config.ConfigException, OSError) as err:
            raise KubeError("load", kubeconfig, 0, f"cannot read kubeconfig {kubeconfig}: {err}") from err
        self.kubeconfig = kubeconfig
        self.host = cfg.host.rstrip("/")
        self._headers: dict[str, str] = {"Accept": "application/json", "User-Agent": "trtop-local-runner"}
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token:
            prefix = cfg.api_key_prefix.get("authorization", "")
            self._headers["Authorization"] = f"{prefix} {token}".strip()
        tls: dict[str, Any] = {}
        if cfg.verify_ssl:
            tls.update(cert_reqs="CERT_REQUIRED", ca_certs=cfg.ssl_ca_cert)
        else:
            tls.update(cert_reqs="CERT_NONE")
        if cfg.cert_file:
            tls.update(cert_file=cfg.cert_file, key_file=cfg.key_file)
        self._http = urllib3.PoolManager(maxsize=16, block=False, retries=False, **tls)
        self._closed = threading.Event()  # set by interrupt_watches: no new watch reads
        self._lock = threading.Lock()
        self._watches: set[urllib3.BaseHTTPResponse] = set()

    def close(self) -> None:
        self.interrupt_watches()
        self._http.clear()

    # --- verbs -------------------------------------------------------------------------
    def get(self, path: str, params: Mapping[str, str] | None = None) -> Obj:
        return self._call("GET", path, params=params)

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    def patch(self, path: str, body: Mapping[str, Any], content_type: str = STRATEGIC_MERGE_PATCH) -> Obj:
        return self._call("PATCH", path, body=body, content_type=content_type)

    def apply(self, path: str, body: Mapping[str, Any]) -> Obj:
        """Server-side apply (field manager ``trtop-local-runner``, conflicts forced)."""
        return self._call("PATCH", path, body=body, content_type=APPLY_PATCH,
                          params={"fieldManager": FIELD_MANAGER, "force": "true"})

    def delete(self, path: str, body: Mapping[str, Any] | None = None) -> Obj | None:
        """DELETE; None when the object is already gone."""
        try:
            return self._call("DELETE", path, body=body)
        except KubeError as err:
            if err.status in (404, 409):  # gone, or a uid precondition that no longer holds
                return None
            raise

    def watch(self, path: str, params: Mapping[str, str]) -> Iterator[Obj]:
        """Watch events ``{type, object}`` until the server ends the stream (its timeoutSeconds).

        ``interrupt_watches()`` ends every open watch from another thread (runner stop); the
        caller resumes a broken or ended watch from the last resourceVersion it saw.
        """
        query = urlencode({**params, "watch": "1", "allowWatchBookmarks": "true"})
        try:
            resp = self._http.request("GET", f"{self.host}{path}?{query}", headers=self._headers,
                                      preload_content=False, timeout=urllib3.Timeout(connect=5.0, read=600.0))
        except urllib3.exceptions.HTTPError as err:
            raise KubeError("WATCH", path, 0, str(err)) from err
        with self._lock:
            self._watches.add(resp)
        try:
            if resp.status >= 400:
                raise KubeError("WATCH", path, resp.status, resp.read().decode(errors="replace"))
            buffer = b""
            while not self._closed.is_set():
                try:
                    chunk = resp.read1(65536)
                except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
                    if self._closed.is_set():
                        return
                    raise KubeError("WATCH", path, 0, f"stream broke: {err}") from err
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            with self._lock:
                self._watches.discard(resp)
            resp.release_conn()

    def interrupt_watches(self, *, final: bool = True) -> None:
        """End every open watch now; ``final=False`` only breaks them (tests of the resume path)."""
        if final:
            self._closed.set()
        with self._lock:
            watches = list(self._watches)
        for resp in watches:
            resp.shutdown()

    # --- plumbing ----------------------------------------------------------------------
    def _call(self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
              content_type: str = "application/json", params: Mapping[str, str] | None = None) -> Obj:
        url = f"{self.host}{path}" + (f"?{urlencode(params)}" if params else "")
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            resp = self._http.request(method, url, body=data, headers=headers,
                                      timeout=urllib3.Timeout(connect=5.0, read=30.0))
        except urllib3.exceptions.HTTPError as err:
            raise KubeError(method, path, 0, str(err)) from err
        text = resp.data.decode(errors="replace")
        if resp.status >= 400:
            raise KubeError(method, path, resp.status, text)
        return json.loads(text) if text else {}
