"""No API call can hang a reconcile, the GC loop or the liveness probe: against an API server
that accepts connections and never answers, every call trtop makes gives up within its timeout
(its own request, not an earlier failure), and a work queue that stops moving fails liveness
(issue 11: "no API call has a timeout and liveness does not notice a stuck loop")."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client
from urllib3.exceptions import ReadTimeoutError

from trtop import names
from trtop.config import Settings
from tests.waiting import api_clients_at, call_within
from trtop.handlers import gc, workers
from trtop.handlers.queue import WorkQueue
from trtop.k8s import client as k8s_client
from trtop.k8s import peering
from trtop.k8s.apply import apply, create_job
from trtop.k8s.events import list_model_deployments, patch_status, post_event
from trtop.k8s.observe import observe_deployment, observe_service

# kubernetes imports its API classes on first use (seconds on a loaded machine): here, not in a timed call.
_API_CLASSES = (client.CoreV1Api, client.AppsV1Api, client.BatchV1Api, client.CustomObjectsApi)
TIMEOUT = 1.0
# A call gives up after its own timeout, once: a GET (or PUT, DELETE) that timed out is not sent again
# (urllib3's default Retry sent it 4 times: 4 s here); the tests count the requests the server saw for that.
# LONGEST only tells a bounded call from one that never returns: the slack is a loaded machine's (a CI's
# patch_status took over 1.5 s for its 1 s timeout, stop 54).
LONGEST = 3.0 * TIMEOUT
# Just enough discovery for the dynamic client (built with the clients) and for applying a Service.
DISCOVERY = {
    "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0"},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "services", "singularName": "service", "namespaced": True, "kind": "Service",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}]},
}


EMPTY_LIST = {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}


@dataclass
class SilentApi:
    """What the server answers: ``DISCOVERY`` when ``discovery``; an empty list for a path that
    does not end with ``hang_only`` when that is set. Everything else never gets a byte back, but
    for the first ``drop`` such requests: their connection is closed at once. ``unanswered``: the
    paths of the requests given no answer (dropped or silent), in order."""
    discovery: bool = True
    hang_only: str | None = None
    drop: int = 0
    unanswered: list[str] = field(default_factory=list)

    def answer(self, path: str) -> object | None:
        if self.discovery and path in DISCOVERY:
            return DISCOVERY[path]
        if self.hang_only is not None and not path.split("?", 1)[0].endswith(self.hang_only):
            return EMPTY_LIST
        return None


def _silent_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: SilentApi) -> Iterator[SilentApi]:
    """The clients pointed at ``api``; a 1 s API timeout."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = api.answer(self.path)
            if answer is None:
                api.unanswered.append(self.path)
                if len(api.unanswered) <= api.drop:
                    self.close_connection = True  # closed without a byte: as a server that restarted
                    return
                stop.wait()  # silent: the connection stays open, no byte comes back
                return
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with api_clients_at(f"http://127.0.0.1:{server.server_address[1]}", tmp_path, monkeypatch, TIMEOUT):
            yield api
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def silent_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentApi]:
    """Discovery answers, every other request hangs: each call's own request is what times out."""
    yield from _silent_api(tmp_path, monkeypatch, SilentApi())


@pytest.fixture
def mute_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentApi]:
    """Not even discovery answers."""
    yield from _silent_api(tmp_path, monkeypatch, SilentApi(discovery=False))


def _within_longest(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """``call_within(LONGEST, call)``: a call still waiting after ``LONGEST`` (a timeout missing) fails the test."""
    return call_within(LONGEST, call)


def _timed_out(error: BaseException | None) -> bool:
    """A read timeout, raised as is: the request was not sent again (retried, urllib3 raises MaxRetryError)."""
    return isinstance(error, ReadTimeoutError)


MD = {"apiVersion": names.API_VERSION, "kind": names.KIND,
      "metadata": {"name": "m", "namespace": "ml", "uid": "u-1", "resourceVersion": "7"}}
JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ml"},
       "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}
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
def test_every_api_call_gives_up_within_its_timeout(silent_api: SilentApi, call: str) -> None:
    error, elapsed = _within_longest(CALLS[call])
    assert _timed_out(error), repr(error)
    assert elapsed >= TIMEOUT  # it did wait on the server (not a config or validation error at once)
    assert len(silent_api.unanswered) == 1, silent_api.unanswered  # sent once: not retried


def test_an_unanswered_get_is_sent_once_and_fails_after_its_timeout(silent_api: SilentApi) -> None:
    error, elapsed = _within_longest(lambda: observe_deployment("ml", "m", "u-1"))
    assert _timed_out(error), repr(error)
    assert TIMEOUT <= elapsed
    assert silent_api.unanswered == ["/apis/apps/v1/namespaces/ml/deployments/m"]  # once: not retried


def test_a_connection_closed_without_an_answer_is_tried_again_at_once(silent_api: SilentApi) -> None:
    silent_api.hang_only, silent_api.drop = "/deployments/m", 1  # dropped once, then an answer
    error, elapsed = _within_longest(lambda: observe_deployment("ml", "m", "u-1"))
    assert _timed_out(error), repr(error)  # the second try's own timeout: the drop cost no waiting
    assert silent_api.unanswered == ["/apis/apps/v1/namespaces/ml/deployments/m"] * 2


@pytest.mark.parametrize("namespaces", [(), ("ml",)], ids=["cluster-wide", "namespaced"])
@pytest.mark.parametrize("listing", ["/pods", "/deployments", "/jobs", f"/{names.PLURAL}"])
def test_each_gc_listing_gives_up_within_its_timeout(
        silent_api: SilentApi, namespaces: tuple[str, ...], listing: str) -> None:
    silent_api.hang_only = listing  # the other listings answer (empty), so this one's own timeout is tested
    error, elapsed = _within_longest(lambda: gc.gather_references(Settings(namespaces=namespaces)))
    assert _timed_out(error), repr(error)
    assert elapsed >= TIMEOUT


def test_api_discovery_gives_up_within_its_timeout_and_says_so(mute_api: SilentApi, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trtop.k8s.client"):
        error, elapsed = _within_longest(k8s_client.get_clients)
    assert _timed_out(error), repr(error)
    assert elapsed >= TIMEOUT
    assert "Kubernetes API discovery at http://127.0.0.1:" in caplog.text and "built again" in caplog.text


@pytest.mark.parametrize("post", [
    lambda: post_event(MD, "Normal", "PhaseReady", "x"),
    lambda: gc._post_namespace_event("ml", "EngineCollected", "x"),
], ids=["post_event", "gc_namespace_event"])
def test_an_event_that_cannot_be_posted_returns_within_its_timeout(
        silent_api: SilentApi, post: Callable[[], None], caplog: pytest.LogCaptureFixture) -> None:
    error, elapsed = _within_longest(post)
    assert error is None and elapsed >= TIMEOUT  # best effort: logged, never raised
    assert "Could not post Event" in caplog.text and "timed out" in caplog.text


@pytest.mark.parametrize("namespaces", [(), ("ml", "ops")])
def test_an_unanswered_peering_read_means_wait_within_its_timeout(
        silent_api: SilentApi, namespaces: tuple[str, ...], caplog: pytest.LogCaptureFixture) -> None:
    config = peering.PeeringConfig(standalone=False, name="trtop", priority=1, namespaces=namespaces, own_id="me")
    works: list[bool] = []
    error, elapsed = _within_longest(lambda: works.append(peering.allowed(config)))
    assert error is None and works == [False] and elapsed >= TIMEOUT  # the first namespace's read decides
    assert "Cannot reach the API server for the peering object trtop" in caplog.text and "timed out" in caplog.text


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
