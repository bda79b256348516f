"""Scale to zero and back with the builtin autoscaler, end to end: a real API server and kwok GPU nodes, the real
operator process with a wake query, and a real Prometheus that the operator reads both the pods' load and the wake
query from.

What cannot run here, named as such: kwok pods run no server, so ``PodsStandIn`` serves the metrics their servers
would (``trtop_inference_inflight_requests`` of each serving pod, labelled with its namespace and pod as a
Kubernetes service discovery would label them) and a gateway's gauge of requests waiting for the model. The
operator cannot tell the difference: it reads the same series from the same Prometheus.
"""
from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily

from tests.prometheus import start_prometheus
from trtop import names

from .operator_harness import ConverterStandIn, OperatorProcess, condition, load_clients, wait_events, wait_for

pytestmark = pytest.mark.e2e
WAITING = "gateway_requests_waiting"
WAKE = f'sum({WAITING}{{namespace="$namespace",model_deployment="$name"}})'


class PodsStandIn(threading.Thread):
    """The /metrics of the serving pods of one ModelDeployment and a gateway's requests waiting for it: what the test
    sets in ``inflight`` and ``waiting``. The pods are listed from the API by this thread every half second, not
    inside a scrape: Prometheus gives a scrape at most its 1 s interval, and a list slower than that (a loaded
    machine) lost every series of the scrape, so the autoscaler had no fresh reading and held its replica."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str) -> None:
        super().__init__(daemon=True, name="pods-stand-in")
        self.core, self.namespace, self.name = core, namespace, name
        self.inflight = 0.0
        self.waiting = 0.0
        self.running: tuple[str, ...] = ()
        self.list_errors: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        selector = f"{names.LABEL_MODEL_DEPLOYMENT}={self.name},{names.LABEL_COMPONENT}={names.COMPONENT_INFERENCE}"
        while not self.stopped.is_set():
            try:
                items = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _request_timeout=5).items
                self.running = tuple(p.metadata.name for p in items if p.status.phase == "Running")
            except Exception as e:  # noqa: BLE001 - the next list tries again; the test's failure shows these
                self.list_errors = [*self.list_errors[-4:], f"{type(e).__name__}: {str(e)[:200]}"]
            self.stopped.wait(0.5)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        inflight = GaugeMetricFamily(names.METRIC_INFLIGHT, "in-flight requests", labels=["model", "namespace", "pod"])
        for pod in self.running:
            inflight.add_metric([self.name, self.namespace, pod], self.inflight)
        yield inflight
        waiting = GaugeMetricFamily(WAITING, "requests a gateway holds", labels=["namespace", "model_deployment"])
        waiting.add_metric([self.namespace, self.name], self.waiting)
        yield waiting


def scaled(md: dict[str, Any]) -> tuple[Any, Any]:
    status = md.get("status") or {}
    return status.get("desiredReplicas"), status.get("readyReplicas")


def test_idle_scales_to_zero_and_load_waiting_wakes_it(dev_cluster, namespace, tmp_path):
    api, custom = load_clients(dev_cluster.kubeconfig)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    pods = PodsStandIn(client.CoreV1Api(load_clients(dev_cluster.kubeconfig)[0]), namespace, "idle")  # own client
    pods.start()
    registry = CollectorRegistry()
    registry.register(pods)  # type: ignore[arg-type]
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    prom = start_prometheus(
        "  - job_name: stand-in\n    honor_labels: true\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.server_port}']\n", tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    stand_in = ConverterStandIn(api, namespace, store)
    stand_in.start()
    op = OperatorProcess(dev_cluster.kubeconfig, namespace, store, tmp_path / "operator.log",
                         TRTOP_PROMETHEUS_URL=prom.url, TRTOP_WAKE_QUERY=WAKE,
                         TRTOP_AUTOSCALE_INTERVAL_SECONDS="1").start()
    try:
        manifest = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "idle"}, "spec": {
            "model": {"uri": "s3://models/resnet50", "format": "savedmodel"},
            "engine": {"batch": {"min": 1, "opt": 4, "max": 16}, "backoffLimit": 0,
                       "podAnnotations": {names.ANNOTATION_KWOK_COMPLETE_AFTER: "3s"}},
            "scaling": {"mode": "builtin", "minReplicas": 0, "maxReplicas": 4, "metric": "inflight", "target": 4,
                        "scaleDownWindowSeconds": 0}}}
        path = tmp_path / "idle.yaml"
        path.write_text(yaml.safe_dump(manifest))
        dev_cluster.kubectl("apply", "-n", namespace, "-f", str(path))

        def md() -> dict[str, Any]:
            return dict(custom.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL,
                                                            "idle"))

        def serving_pods() -> list[Any]:
            selector = f"{names.LABEL_MODEL_DEPLOYMENT}=idle,{names.LABEL_COMPONENT}={names.COMPONENT_INFERENCE}"
            return core.list_namespaced_pod(namespace, label_selector=selector).items

        # A new object starts with one replica (its first rollout shows the engine loads), idle: then zero.
        try:
            wait_events(core, namespace, "idle", lambda evs: any(
                e.reason == "ScaledDown" and e.message.startswith("replicas 1 -> 0") for e in evs),
                "a ScaledDown Event from the first replica to zero", timeout=120)
        except AssertionError as e:  # what the autoscaler last saw: no pods listed, readings missing, ...
            status = md().get("status") or {}
            seen = {k: status.get(k) for k in ("lastMetric", "lastScale", "desiredReplicas", "readyReplicas", "units")}
            pods_now = [(p.metadata.name, p.status.phase, p.metadata.owner_references and
                         [(r.kind, r.controller) for r in p.metadata.owner_references]) for p in serving_pods()]
            try:
                with urllib.request.urlopen(f"{prom.url}/api/v1/query?query=up", timeout=5) as answer:
                    up = answer.read().decode()[:500]
            except OSError as err:
                up = f"not read: {err}"
            raise AssertionError(f"{e}\nstatus: {seen}\npods: {pods_now}\nstand-in: running {pods.running}, list "
                                 f"errors {pods.list_errors}\nprometheus up: {up}\noperator log:\n"
                                 f"{op.log()[-4000:]}") from None
        wait_for("scaled to zero while idle", lambda: scaled(md())[0] == 0 and not serving_pods(), timeout=90)
        now = wait_for("Available=True, ScaledToZero", lambda: (m := md()) and condition(m, "Available").get(
            "reason") == "ScaledToZero" and m, timeout=30)
        assert condition(now, "Available").get("status") == "True", now.get("status")
        assert condition(now, "Ready").get("status") == "True", now.get("status")
        units = apps.list_namespaced_deployment(
            namespace, label_selector=f"{names.LABEL_MODEL_DEPLOYMENT}=idle,{names.LABEL_TARGET}").items
        assert units and all(d.spec.replicas == 0 for d in units), [d.spec.replicas for d in units]
        rollouts = {d.metadata.name: d.metadata.generation for d in units}

        # At zero with nothing waiting it stays there: rounds pass, nothing starts.
        wait_for("a few autoscaler rounds at zero", lambda: md()["status"].get("lastMetric", {}).get("desired") == 0)
        assert scaled(md())[0] == 0 and not serving_pods()

        # Six requests held at the gateway, target 4 per replica: two replicas, on the Deployments kept at zero.
        pods.waiting = 6
        wait_for("woken to two ready replicas", lambda: scaled(md()) == (2, 2), timeout=90)
        wait_events(core, namespace, "idle", lambda evs: any(
            e.reason == "ScaledUp" and "waiting while scaled to zero" in e.message for e in evs),
            "a ScaledUp Event naming the load waiting")
        after = apps.list_namespaced_deployment(
            namespace, label_selector=f"{names.LABEL_MODEL_DEPLOYMENT}=idle,{names.LABEL_TARGET}").items
        assert {d.metadata.name for d in after} == set(rollouts), "waking made new units"
        assert sum(d.spec.replicas for d in after) == 2
    finally:
        pods.stopped.set()
        stand_in.stop()
        code = op.stop()
        prom.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    log = op.log()
    assert "Traceback" not in log, log[-4000:]
    assert code in (0, -15), f"operator exit code {code}: {log[-2000:]}"
