"""Test harness for operator e2e tests: the real operator as a process, and the converter's stand-in.

On kwok nodes nothing runs inside pods, so until a local kubelet stand-in runs the real
converter, ``ConverterStandIn`` plays the build Job's part: when a build Job appears it
publishes an engine for the Job's key into the engine store (or, for targets told to
fail, publishes nothing). The operator cannot tell the difference: it reads the same
store and the same Job objects.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from trtop import names
from trtop_dev.devcluster import testing
from trtop.api.engine import EngineRecord, EngineRequest, TensorSpec

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy, through any error (the API clients' transient
    ones); fail with ``what`` and the last value."""
    return testing.wait_for(what, check, timeout, interval, retry_on=(Exception,))


class OperatorProcess:
    """``trtop operator`` as a real process watching one namespace."""

    def __init__(self, kubeconfig: str, namespace: str, store: Path, log_path: Path, **env: str) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path = log_path
        self.env = {
            **os.environ, "KUBECONFIG": kubeconfig, "TRTOP_NAMESPACES": namespace, "TRTOP_STORE_URI": str(store),
            # The safety net stays slow, as in production: watches must trigger everything the tests wait for.
            "TRTOP_METRICS_PORT": str(self.metrics_port), "TRTOP_RECONCILE_INTERVAL_SECONDS": "300",
            "PYTHONUNBUFFERED": "1", **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def start(self) -> OperatorProcess:
        self._close_log()
        log = self._log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trtop.cli", "operator", "--standalone",
             "--liveness", f"http://127.0.0.1:{self.health_port}/healthz"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        wait_for("operator liveness endpoint", self.healthy, timeout=60)
        return self

    def healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"operator exited: {self.log()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        """SIGKILL: no clean-up, like an OOM kill or a lost node."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()
        return self.proc.returncode if self.proc else 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ConverterStandIn(threading.Thread):
    """Publishes an engine for each new build Job's key (except targets in ``fail_targets``)."""

    def __init__(self, api: client.ApiClient, namespace: str, store: Path) -> None:
        super().__init__(daemon=True)
        self.batch, self.core = client.BatchV1Api(api), client.CoreV1Api(api)
        self.namespace, self.store = namespace, store
        self.fail_targets: set[str] = set()  # target strings ("8.9/NVIDIA-L4") whose builds publish nothing
        self.hold = threading.Event()  # while set, builds stay "running" (nothing is published)
        self.seen: dict[str, str] = {}  # key -> Job name, for every build Job ever seen
        self._stop = threading.Event()

    def run(self) -> None:
        selector = f"{names.LABEL_COMPONENT}={names.COMPONENT_ENGINE_BUILD}"
        while not self._stop.is_set():
            try:
                for job in self.batch.list_namespaced_job(self.namespace, label_selector=selector).items:
                    request = EngineRequest.from_json(job.metadata.annotations[names.ANNOTATION_ENGINE_REQUEST])
                    self.seen.setdefault(request.key, job.metadata.name)
                    if str(request.target) in self.fail_targets:
                        self._fail_pods_of(job.metadata.name)
                    elif not self.hold.is_set():
                        publish_fake_engine(self.store, request)
            except Exception:  # noqa: BLE001 - the API may be briefly unavailable; try again
                pass
            self._stop.wait(0.3)

    def _fail_pods_of(self, job_name: str) -> None:
        """Label the Job's pods so kwok fails them (exit code 1): a real failed build Job."""
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job_name}").items:
            if (pod.metadata.labels or {}).get(names.LABEL_KWOK_FAIL) != "true":
                self.core.patch_namespaced_pod(pod.metadata.name, self.namespace,
                                               {"metadata": {"labels": {names.LABEL_KWOK_FAIL: "true"}}})

    def stop(self) -> None:
        self._stop.set()


def publish_fake_engine(store: Path, request: EngineRequest) -> None:
    """Write ``<store>/<scope>/<key>/engine.json`` (+ an artifact) in the store layout, atomically."""
    final = store / request.scope / request.key
    if final.exists():
        return
    tmp = store / request.scope / f".tmp-{request.key}-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    artifact = "model.plan" if request.backend == "tensorrt" else "model.onnx"
    payload = b"stand-in artifact: no TensorRT build runs on kwok nodes"
    (tmp / artifact).write_bytes(payload)
    record = EngineRecord(
        key=request.key, target=request.target, backend=request.backend, artifact=artifact,
        precision=request.precision, batch=request.batch,
        inputs=(TensorSpec("input", "float32", (-1, 4)),), outputs=(TensorSpec("output", "float32", (-1, 2)),),
        model_digest="sha256:" + "0" * 64, versions={"converter": "stand-in"},
        parity={"max_abs_error": 0.0, "max_rel_error": 0.0, "tolerance": 1e-3},
        benchmark={"batch_opt": {"p50_ms": 1.0, "p99_ms": 2.0, "throughput": 1000.0}}, build_seconds=1.0,
        sha256=hashlib.sha256(payload).hexdigest(), size=len(payload),
    )
    (tmp / names.ENGINE_METADATA_FILE).write_text(record.to_json())
    try:
        tmp.rename(final)
    except OSError:  # a concurrent publish won
        pass


def load_clients(kubeconfig: str) -> tuple[client.ApiClient, client.CustomObjectsApi]:
    api = config.new_client_from_config(config_file=kubeconfig)
    return api, client.CustomObjectsApi(api)


def get_md(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, name))


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (md.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def events_for(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    evs = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return sorted(evs, key=lambda e: e.metadata.creation_timestamp)


def wait_events(core: client.CoreV1Api, namespace: str, name: str, check: Callable[[list[Any]], bool],
                what: str, timeout: float = 30) -> list[Any]:
    """The Events of ``name`` once ``check`` holds for them: the operator posts Events beside its
    status patches (kopf queues them), so a condition can be seen before its Event."""
    return wait_for(what, lambda: (evs := events_for(core, namespace, name)) and check(evs) and evs, timeout)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]
