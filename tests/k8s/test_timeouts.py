"""No API call can hang a reconcile or the liveness probe: against an API server that accepts
connections and never answers, every call trtop makes gives up within its timeout, and a
work queue that stops moving fails liveness (issue 11: "no API call has a timeout and
liveness does not notice a stuck loop")."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from trtop import names
from trtop.config import Settings
from trtop.handlers import workers
from trtop.handlers.queue import WorkQueue
from trtop.k8s import client as k8s_client
from trtop.k8s.apply import apply, create_job
from trtop.k8s.events import list_model_deployments, patch_status, post_event
from trtop.k8s.observe import observe_deployment, observe_service


@pytest.fixture
def silent_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """KUBECONFIG pointing at a listener that accepts and never says a word; 1 s API timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{listener.getsockname()[1]}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    k8s_client.get_clients.cache_clear()
    k8s_client.configure_timeout(1.0)
    try:
        yield
    finally:
        k8s_client.configure_timeout(Settings().api_timeout_seconds)
        k8s_client.get_clients.cache_clear()
        stop.set()
        thread.join(timeout=5)
        for s in held:
            s.close()
        listener.close()


MD = {"apiVersion": names.API_VERSION, "kind": names.KIND,
      "metadata": {"name": "m", "namespace": "ml", "uid": "u-1", "resourceVersion": "7"}}
JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ml"}, "spec": {}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m", "namespace": "ml"}, "spec": {}}

CALLS = {
    "patch_status": lambda: patch_status(MD, {"phase": "Ready"}),
    "create_job": lambda: create_job(JOB),
    "apply": lambda: apply(SERVICE),
    "list_model_deployments": lambda: list_model_deployments(("ml",)),
    "observe_deployment": lambda: observe_deployment("ml", "m", "u-1"),
    "observe_service": lambda: observe_service("ml", "m", "u-1"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_every_api_call_gives_up_within_its_timeout(silent_api: None, call: str) -> None:
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - whichever transport error: the point is that it returns
        CALLS[call]()
    assert time.monotonic() - started < 10  # 1 s per request; the dynamic client's discovery is two


def test_an_event_that_cannot_be_posted_returns_within_its_timeout(silent_api: None) -> None:
    started = time.monotonic()
    post_event(MD, "Normal", "PhaseReady", "x")  # best effort: logged, never raised
    assert time.monotonic() - started < 5


def test_liveness_fails_once_queued_work_stops_moving(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    queue: WorkQueue[tuple[str, str]] = WorkQueue(clock=lambda: now[0])
    monkeypatch.setattr(workers, "QUEUE", queue)
    settings = Settings(api_timeout_seconds=5, store_timeout_seconds=5)
    assert workers.liveness(settings)["stalledSeconds"] == 0.0  # idle is healthy
    queue.add(("ml", "m"))
    now[0] += 30
    assert workers.liveness(settings)["queued"] == 1.0  # waiting, within 4 x (5 + 5) s
    now[0] += 20
    with pytest.raises(RuntimeError, match="no progress for 50s"):
        workers.liveness(settings)
