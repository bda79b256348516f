"""``trtop dev demo``: the whole path, for real, from ``kubectl apply`` to an answer.

Dev cluster up (with its real node: a kubelet on containerd) -> the operator, converter-cpu
and server-cpu images built from images/*/Dockerfile* into that node's containerd -> trtop
installed with Helm, its operator pod on the real node -> the demo model made by
examples/demo/model.py on a PVC -> ``kubectl apply -f examples/demo/modeldeployment.yaml``
-> the converter builds and verifies the engine in a build Job's container -> Ready -> a
real inference request through the model's Service (kube-proxy) to a serving pod, checked
against TensorFlow -> a burst of load and the replicas following it -> a summary. Every
step prints progress. The e2e test (tests/e2e/test_demo.py) drives the same ``Demo`` and
asserts on what it returns.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtop import names
from trtop.planning.common import POD_SECURITY_CONTEXT
from trtop_dev.devcluster import cluster, nodeconfig, workspace
from trtop_dev.devcluster.loadgen import LoadGenerator, infer, infer_body
from trtop_dev.devcluster.testing import DevCluster, wait_for

NAMESPACE = "trtop-demo"
RELEASE = "trtop"
MODEL = "demo"
# What runs in the demo's pods, built here (hack/build-images.sh): no registry is needed.
IMAGES = ("operator", "converter-cpu", "server-cpu")


@dataclass
class Timeline:
    rows: list[tuple[float, int, int, int, float]] = field(default_factory=list)  # t, ok, desired, ready, metric

    def table(self) -> str:
        lines = ["   t(s)  answers  desired  ready  load per pod (last reading)"]
        lines += [f"  {t:5.0f}  {ok:7d}  {d:7d}  {r:5d}  {m:8.2f}" for t, ok, d, r, m in self.rows]
        return "\n".join(lines)


@dataclass
class DemoResult:
    answer: list[float] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    max_abs_error: float = 0.0
    latency_ms: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=Timeline)
    max_replicas_seen: int = 0
    final_replicas: int = 0
    events: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, dev: DevCluster, say: Callable[[str], None] = print, storage: Path | None = None) -> None:
        self.dev, self.say = dev, say
        self.root = workspace.repo_root()
        self.storage = storage or self.root / ".work" / "demo"  # engines/ and models/ (hostPath volumes)
        self.model_path = self.storage / "models" / "demo.keras"
        self.result = DemoResult()
        self.t0 = time.monotonic()

    # --- steps -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Remove what an earlier run left (the engines under .work/demo/engines stay: a rerun reuses them)."""
        self.dev.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
        self.dev.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s", timeout=150)
        self.dev.kubectl("delete", "pv", f"{NAMESPACE}-engines", f"{NAMESPACE}-models", "--ignore-not-found")

    def build_images(self) -> None:
        self._step(f"images: {', '.join(IMAGES)} built from images/*/Dockerfile* into the real node's containerd "
                   "(BuildKit; unchanged layers come from its cache)")
        node = self.dev.kubectl("get", "node", nodeconfig.NODE_NAME, "--ignore-not-found", "-o", "name").strip()
        if not node:
            raise RuntimeError(f"the dev cluster has no real node {nodeconfig.NODE_NAME} (it was started with "
                               "--no-real-node, or another cluster on this machine holds it): the demo's pods "
                               "need a kubelet; see docs/dev-cluster.md")
        started = time.monotonic()
        subprocess.run([str(self.root / "hack" / "build-images.sh"), *IMAGES], check=True, timeout=1800)
        self.say(f"  images ready in {time.monotonic() - started:.0f} s")

    def install(self, *, watch_only_demo_namespace: bool = False) -> None:
        self._step("storage: the engine-store and models claims, bound to hostPath volumes under .work/demo")
        self.dev.kubectl("create", "namespace", NAMESPACE, check=False)
        self.dev.apply(storage_manifests(self.storage))
        self._step("model: a small Keras classifier made by examples/demo/model.py onto the models claim")
        made = _quiet_python(str(self.root / "examples/demo/model.py"), str(self.model_path))
        self.say("  " + made.strip())
        self._step(f"operator: helm upgrade --install trtop charts/trtop (its pod runs on the real node "
                   f"{nodeconfig.NODE_NAME})")
        self.dev.helm("upgrade", "--install", RELEASE, str(self.root / "charts/trtop"), "-n", NAMESPACE,
                      "--set", "store.pvc.create=false", "--set", "store.pvc.existingClaim=trtop-engines",
                      "--set-string", f"nodeSelector.kubernetes\\.io/hostname={nodeconfig.NODE_NAME}",
                      "--set-string", f"tolerations[0].key={nodeconfig.TOLERATION['key']}",
                      "--set-string", f"tolerations[0].operator={nodeconfig.TOLERATION['operator']}",
                      "--set-string", f"tolerations[0].value={nodeconfig.TOLERATION['value']}",
                      "--set-string", f"tolerations[0].effect={nodeconfig.TOLERATION['effect']}",
                      "--set", "operator.reconcileIntervalSeconds=2", "--set", "operator.autoscaleIntervalSeconds=3",
                      *(("--set", "rbac.namespaced=true", "--set", f"watchNamespaces={{{NAMESPACE}}}")
                        if watch_only_demo_namespace else ()),
                      "--wait", "--timeout", "180s", timeout=240)
        self.say("  " + self.dev.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide").replace("\n", "\n  "))

    def deploy(self, timeout: float = 600) -> dict[str, Any]:
        self._step("kubectl apply -f examples/demo/modeldeployment.yaml")
        self.dev.kubectl("apply", "-n", NAMESPACE, "-f", str(self.root / "examples/demo/modeldeployment.yaml"))
        seen: set[str] = set()

        def ready() -> Any:
            md = self.dev.get("md", MODEL, "-n", NAMESPACE)
            status = md.get("status") or {}
            if not status:
                return None
            line = f"phase={status.get('phase')} engines={status.get('enginesReady')} " + " ".join(
                f"[{e['target']}: {e['state']}]" for e in status.get("engines", []))
            if line not in seen:
                seen.add(line)
                self.say(f"  {self._t():5.0f}s  {line}")
            if status.get("phase") in ("Failed", "Stalled"):
                raise RuntimeError(f"the ModelDeployment is {status['phase']}: {status.get('message')}")
            ok = any(c["type"] == names.COND_READY and c["status"] == "True" for c in status.get("conditions", []))
            return md if ok and status.get("observedGeneration") == md["metadata"]["generation"] else None

        md: dict[str, Any] = wait_for("the ModelDeployment to be Ready", ready, timeout=timeout, interval=1.0)
        self.result.engine = md["status"]["engines"][0]
        e = self.result.engine
        self.say(f"  engine {e['key']} ({e.get('backend')}) built in {e.get('buildSeconds')} s, "
                 f"parity max abs error {e.get('parityMaxAbsError')}, benchmark {json.dumps(e.get('benchmark'))}")
        return md

    def ask(self) -> None:
        self._step("a real inference request (Open Inference Protocol v2) through the model's Service")
        address = self.service_address()
        rng = np.random.default_rng(0)
        image = rng.random((1, 32, 32, 3), dtype=np.float32)
        meta = json.loads(_http_get(address, f"/v2/models/{MODEL}"))
        input_name = meta["inputs"][0]["name"]
        start = time.perf_counter()
        answer = infer(address, MODEL, infer_body(input_name, image))
        self.result.latency_ms = (time.perf_counter() - start) * 1000
        probs = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
        self.result.answer = probs.tolist()
        expected = _tensorflow_answer(self.model_path, image)
        self.result.expected = expected.ravel().tolist()
        self.result.max_abs_error = float(np.max(np.abs(probs - expected.ravel())))
        self.say(f"  POST http://{address}/v2/models/{MODEL}/infer -> class {int(np.argmax(probs))} "
                 f"(p={probs.max():.4f}) in {self.result.latency_ms:.1f} ms; TensorFlow says class "
                 f"{int(np.argmax(expected))}; max abs difference {self.result.max_abs_error:.2e}")

    def load(self, seconds: float = 45, concurrency: int = 12, settle: float = 40) -> None:
        self._step(f"a burst of load: {concurrency} concurrent clients for {seconds:.0f} s, then quiet")
        meta = json.loads(_http_get(self.endpoints()[0], f"/v2/models/{MODEL}"))
        body = infer_body(meta["inputs"][0]["name"], np.zeros((1, 32, 32, 3), dtype=np.float32))
        start = time.monotonic()
        with LoadGenerator(self.endpoints, MODEL, body, concurrency) as gen:
            while time.monotonic() - start < seconds:
                self._sample(gen.stats.ok)
                time.sleep(3)
        self.say(f"  load done: {gen.stats.ok} answers, {gen.stats.errors} errors, p50 {gen.stats.p(50):.1f} ms, "
                 f"p99 {gen.stats.p(99):.1f} ms")
        end = time.monotonic()
        while time.monotonic() - end < settle:
            self._sample(gen.stats.ok)
            time.sleep(3)
        self.say(self.result.timeline.table())

    def summary(self) -> str:
        evs = self.dev.get("events", "-n", NAMESPACE, "--field-selector",
                           f"involvedObject.name={MODEL},involvedObject.kind={names.KIND}")["items"]
        self.result.events = [f"{e['reason']}: {e['message']}" for e in
                              sorted(evs, key=lambda e: e.get("lastTimestamp") or e["metadata"]["creationTimestamp"])]
        text = "\n".join([
            "", "=== what happened ===",
            f"- engine: {self.result.engine.get('key')} for target {self.result.engine.get('target')}, "
            f"verified against TensorFlow (parity max abs error {self.result.engine.get('parityMaxAbsError')})",
            f"- answer: matches TensorFlow within {self.result.max_abs_error:.1e}, first request "
            f"{self.result.latency_ms:.1f} ms",
            f"- scaling: replicas went up to {self.result.max_replicas_seen} under load and back to "
            f"{self.result.final_replicas}",
            "- events:", *(f"    {e}" for e in self.result.events[-15:]),
            "", "Look around:  export KUBECONFIG=" + self.dev.kubeconfig,
            f"              kubectl get md,jobs,deploy,pods -n {NAMESPACE}; kubectl describe md {MODEL} -n {NAMESPACE}",
            f"Pod logs:     kubectl logs -n {NAMESPACE} -l {names.LABEL_COMPONENT}={names.COMPONENT_INFERENCE}",
            f"Clean up:     helm uninstall {RELEASE} -n {NAMESPACE}; trtop dev cluster down",
        ])
        self.say(text)
        return text

    # --- helpers -----------------------------------------------------------------------------
    def service_address(self) -> str:
        """ClusterIP:port of the model's Service: kube-proxy routes it to a ready pod (from this host too)."""
        svc = self.dev.get("service", MODEL, "-n", NAMESPACE)
        port = next(p["port"] for p in svc["spec"]["ports"] if p.get("name") == "http")
        return f"{svc['spec']['clusterIP']}:{port}"

    def endpoints(self) -> list[str]:
        """podIP:port of every ready serving pod (on the node's CNI bridge, reachable from this host).

        The load generator spreads its clients over them itself, so every replica gets its
        share at once (through the Service, kube-proxy would pin each kept-alive connection).
        """
        md = self.dev.get("md", MODEL, "-n", NAMESPACE)
        pods = self.dev.get("pods", "-n", NAMESPACE, "-l", md["status"]["selector"])["items"]
        out = []
        for pod in pods:
            st = pod.get("status") or {}
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
            port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            if ready and st.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
                out.append(f"{st['podIP']}:{port}")
        return sorted(out)

    def _sample(self, answers: int) -> None:
        md = self.dev.get("md", MODEL, "-n", NAMESPACE)
        st = md.get("status") or {}
        desired, ready = int(st.get("desiredReplicas") or 0), int(st.get("readyReplicas") or 0)
        metric = float((st.get("lastMetric") or {}).get("metric") or 0.0)
        self.result.timeline.rows.append((self._t(), answers, desired, ready, metric))
        self.result.max_replicas_seen = max(self.result.max_replicas_seen, desired)
        self.result.final_replicas = desired
        self.say(f"  {self._t():5.0f}s  answers={answers:6d}  desired={desired}  ready={ready}")

    def _step(self, text: str) -> None:
        self.say(f"\n[{self._t():5.0f}s] {text}")

    def _t(self) -> float:
        return time.monotonic() - self.t0


def storage_manifests(root: Path) -> list[dict[str, Any]]:
    """PVs (hostPath under ``root``) pre-bound to the demo's two claims: the dev cluster has no provisioner.

    The folders, and what an earlier run left in them, belong to the workloads' user (a
    hostPath ignores fsGroup): the build Job writes engines there as that user.
    """
    out: list[dict[str, Any]] = []
    for claim, folder in (("trtop-engines", "engines"), ("models", "models")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            _chown_tree(root / folder, POD_SECURITY_CONTEXT["runAsUser"], POD_SECURITY_CONTEXT["runAsGroup"])
        pv = f"{NAMESPACE}-{folder}"
        out.append({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                    "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteMany"],
                             "storageClassName": "", "hostPath": {"path": str(root / folder)},
                             "claimRef": {"namespace": NAMESPACE, "name": claim}}})
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": NAMESPACE},
                    "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                             "resources": {"requests": {"storage": "1Gi"}}}})
    return out


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _http_get(address: str, path: str) -> str:
    import http.client

    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _tensorflow_answer(path: Path, image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What the original model says, computed in a child process (TensorFlow stays out of this one)."""
    code = ("import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1]); "
            "x = np.load(sys.argv[2]); np.save(sys.argv[3], m(x, training=False).numpy())")
    tmp = path.parent / ".demo-io"
    tmp.mkdir(exist_ok=True)
    np.save(tmp / "x.npy", image)
    _quiet_python("-c", code, str(path), str(tmp / "x.npy"), str(tmp / "y.npy"))
    return np.asarray(np.load(tmp / "y.npy"))


def _quiet_python(*args: str) -> str:
    """Run this Python with ``args``; its stdout. TensorFlow's start-up chatter on stderr is shown only on failure."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="trtop dev demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=workspace.DEFAULT_NAME, help="dev cluster name (default %(default)s)")
    args = parser.parse_args(argv)
    info = cluster.up(args.name)
    assert info is not None
    dev = DevCluster(str(info.kubeconfig), info.kubectl, args.name, info.created)
    demo = Demo(dev)
    try:
        demo.build_images()
        demo.reset()
        demo.install()
        demo.deploy()
        demo.ask()
        demo.load()
        demo.summary()
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        print(f"\ntrtop dev demo: {err}\nLook around:  export KUBECONFIG={dev.kubeconfig}; "
              f"kubectl get md,jobs,pods -n {NAMESPACE}; kubectl describe md {MODEL} -n {NAMESPACE}; "
              f"kubectl logs -n {NAMESPACE} job/<name>", file=sys.stderr)
        return 1
    print("\nThe pods keep running on the real node until: helm uninstall trtop -n trtop-demo (or trtop dev cluster down).")
    return 0
