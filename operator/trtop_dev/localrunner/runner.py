"""``LocalRunner``: the kubelet stand-in for ONE node of the dev cluster (demo and tests only).

It registers its Node, keeps it Ready, watches the pods bound to it (all namespaces) and
gives each a ``PodWorker`` thread that runs the pod's containers as local processes. A
broken watch is resumed from the last resourceVersion (or a fresh list on 410 Gone).
``stop()`` stops every process it started, then deletes the node (or marks it NotReady).

    with LocalRunner(kubeconfig, node_name="local-runner") as runner:
        ...  # pods scheduled on node "local-runner" now really run

Called by ``trtop dev runner`` (``trtop_dev.localrunner.cli``) and tests (tests/localrunner/conftest.py).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from trtop_dev.localrunner.addresses import LoopbackAddresses
from trtop_dev.localrunner.kube import Kube, KubeError, pod_path
from trtop_dev.localrunner.node import HEARTBEAT_SECONDS, HOST_IP, NodeAgent, NodeShape
from trtop_dev.localrunner.pod import PodWorker, RunnerContext, final_delete

log = logging.getLogger("trtop_dev.localrunner")

DEFAULT_NODE = "local-runner"
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV", "PYTHONPATH", "TRTOP_REPO")
WATCH_SECONDS = 240  # the server ends each watch after this; it is resumed at once
TERMINAL = ("Succeeded", "Failed")


def default_work_dir() -> Path:
    from trtop_dev.devcluster import workspace

    return workspace.repo_root() / ".work" / "local-runner"


class LocalRunner:
    """Runs the pods bound to ``node_name`` as local processes while started."""

    def __init__(self, kubeconfig: str | Path, node_name: str = DEFAULT_NODE, pvc_root: str | Path | None = None,
                 work_dir: str | Path | None = None, *, shape: NodeShape | None = None,
                 env: Mapping[str, str] | None = None, delete_node_on_exit: bool = True,
                 ready_timeout: float = 30.0) -> None:
        self.kubeconfig = str(Path(kubeconfig).resolve())
        self.node_name = node_name
        self.work_dir = Path(work_dir) if work_dir else default_work_dir()
        self.pvc_root = Path(pvc_root) if pvc_root else self.work_dir / "pvc"
        self.shape = shape or NodeShape()
        self.delete_node_on_exit = delete_node_on_exit
        self.ready_timeout = ready_timeout
        self._extra_env = dict(env or {})
        self._addresses = LoopbackAddresses()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._started = False
        self._threads: list[threading.Thread] = []
        self._kube: Kube | None = None
        self._node: NodeAgent | None = None
        self._ctx: RunnerContext | None = None

    # --- public ----------------------------------------------------------------------------
    def start(self) -> LocalRunner:
        """Register the node, wait until pods can be scheduled on it, start watching; returns self."""
        if self._started:
            return self
        self._kube = kube = Kube(self.kubeconfig)
        base = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        self._ctx = RunnerContext(kube=kube, host_ip=HOST_IP, work_dir=self.work_dir, pvc_root=self.pvc_root,
                                  base_env={**base, **self._extra_env},
                                  forced_env={"KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"})
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._node = NodeAgent(kube, self.node_name, self.shape)
        self._node.register()
        self._started = True
        atexit.register(self.stop)
        deadline = time.monotonic() + self.ready_timeout
        while not self._node.ready_for_pods() and time.monotonic() < deadline:
            time.sleep(0.2)
        log.info("node %s registered (work dir %s, claims under %s)", self.node_name, self.work_dir, self.pvc_root)
        for target, name in ((self._watch_loop, "watch"), (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=f"local-runner-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, grace, SIGKILL), then delete the node or mark it NotReady."""
        if not self._started or self._stopped.is_set():
            return
        self._stopped.set()
        atexit.unregister(self.stop)
        assert self._kube is not None and self._node is not None
        self._kube.interrupt_watches()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(timeout=60)
        for thread in self._threads:
            thread.join(timeout=15)
        try:
            self._node.leave(delete=self.delete_node_on_exit)
        except KubeError as err:
            log.warning("node %s: could not %s it: %s", self.node_name,
                        "delete" if self.delete_node_on_exit else "mark NotReady", err)
        self._kube.close()
        log.info("node %s: stopped (%s)", self.node_name, "deleted" if self.delete_node_on_exit else "NotReady")

    def __enter__(self) -> LocalRunner:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def placement(self) -> dict[str, Any]:
        """Pod spec fields that put a pod on this runner's node: nodeSelector + tolerations of its taints."""
        tolerations = [{"key": t["key"], "operator": "Equal", "value": t.get("value", ""), "effect": t["effect"]}
                       for t in self.shape.taints]
        return {"nodeSelector": {"kubernetes.io/hostname": self.node_name}, "tolerations": tolerations}

    def log_path(self, namespace: str, pod: str) -> Path:
        """Where the processes of pod ``namespace/pod`` write stdout and stderr."""
        return self.work_dir / "logs" / f"{namespace}_{pod}.log"

    def pids(self) -> list[int]:
        """Process ids of every container process running now."""
        with self._lock:
            workers = list(self._workers.values())
        return [pid for w in workers for pid in w.pids()]

    def pod_ips(self) -> dict[str, str]:
        """Pod uid -> loopback address, for the pods the runner holds now."""
        return self._addresses.held()

    # --- the watch -------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        assert self._kube is not None
        selector = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        version = ""
        while not self._stopped.is_set():
            try:
                if not version:
                    version = self._relist(selector)
                for event in self._kube.watch("/api/v1/pods", {**selector, "resourceVersion": version,
                                                                "timeoutSeconds": str(WATCH_SECONDS)}):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        log.info("pod watch: %s; listing again", obj.get("message", obj))
                        version = ""
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self._on_pod(obj, deleted=kind == "DELETED")
            except KubeError as err:
                if self._stopped.is_set():
                    return
                log.warning("pod watch broke (%s); resuming in 1 s", err)
                version = ""  # a fresh list also catches deletions missed meanwhile
                self._stopped.wait(1.0)
            except Exception:  # keep the runner alive whatever one event held
                log.exception("pod watch: unexpected error; listing again in 1 s")
                version = ""
                self._stopped.wait(1.0)

    def _relist(self, selector: Mapping[str, str]) -> str:
        assert self._kube is not None
        listed = self._kube.get("/api/v1/pods", selector)
        seen = set()
        for pod in listed.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._on_pod(pod, deleted=False)
        with self._lock:
            gone = [w for uid, w in self._workers.items() if uid not in seen]
        for worker in gone:
            worker.vanish()
        return str(listed["metadata"]["resourceVersion"])

    def _on_pod(self, pod: dict[str, Any], *, deleted: bool) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        assert self._ctx is not None
        with self._lock:
            if self._stopped.is_set():
                return
            worker = self._workers.get(uid)
            if worker is not None:
                worker.vanish() if deleted else worker.update(pod)
                return
            if deleted:
                return
            status = pod.get("status") or {}
            if uid in self._finished or status.get("phase") in TERMINAL or meta.get("deletionTimestamp"):
                if meta.get("deletionTimestamp"):  # nothing of ours runs: the kubelet's final delete
                    self._ctx.kube.delete(pod_path(meta["namespace"], meta["name"]), final_delete(uid))
                return
            address = self._addresses.take(uid, wanted=status.get("podIP"))
            worker = PodWorker(self._ctx, pod, address, self._worker_done)
            self._workers[uid] = worker
        worker.start()

    def _worker_done(self, uid: str) -> None:
        with self._lock:
            self._workers.pop(uid, None)
            self._finished.add(uid)
        self._addresses.give_back(uid)

    def _heartbeat_loop(self) -> None:
        assert self._node is not None
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            try:
                self._node.heartbeat()
            except KubeError as err:
                log.warning("node %s: heartbeat failed (will retry): %s", self.node_name, err)
