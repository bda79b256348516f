"""One pod on the runner's node, from first sight to the kubelet's final delete (a thread).

Pending (volumes and env prepared, pod IP posted) -> Running (processes started, probes
drive Ready) -> Succeeded / Failed (restartPolicy Never / OnFailure), or restarts with
back-off (Always). When the pod gets a deletionTimestamp its processes get SIGTERM, up to
the grace period (capped at 30 s), then SIGKILL, and the pod is deleted with
gracePeriodSeconds=0. A pod that cannot run is posted Failed with a reason instead.
Called by ``trtop_dev.localrunner.runner``.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtop_dev.localrunner.container import ContainerSlot
from trtop_dev.localrunner.kube import Kube, KubeError, pod_path
from trtop_dev.localrunner.podspec import PodSpecError, Rewriter, build_process
from trtop_dev.localrunner.status import ContainerView, failed_status, now, phase_of, pod_status
from trtop_dev.localrunner.volumes import lookup_data, mounts_of, prepare_volumes

log = logging.getLogger("trtop_dev.localrunner")

TICK_S = 0.2
MAX_GRACE_S = 30.0
VANISHED_GRACE_S = 2.0


@dataclass(frozen=True)
class RunnerContext:
    """What every pod worker shares with the runner."""

    kube: Kube
    host_ip: str
    work_dir: Path  # pods/ (per-pod folders) and logs/
    pvc_root: Path
    base_env: Mapping[str, str]  # below each container's own env (PATH, LANG, the runner's extra env)
    forced_env: Mapping[str, str]  # over it (KUBECONFIG, PYTHONUNBUFFERED)

    def log_path(self, namespace: str, name: str) -> Path:
        return self.work_dir / "logs" / f"{namespace}_{name}.log"


def final_delete(uid: str) -> dict[str, Any]:
    """The kubelet's last word on a pod: delete it now, but only this incarnation of the name."""
    return {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}


class PodWorker(threading.Thread):
    def __init__(self, ctx: RunnerContext, pod: Mapping[str, Any], pod_ip: str, on_done: Callable[[str], None]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx, self.pod, self.pod_ip, self.on_done = ctx, pod, pod_ip, on_done
        self.uid, self.namespace, self.pod_name = meta["uid"], meta["namespace"], meta["name"]
        self.label = f"pod {self.namespace}/{self.pod_name}"
        self.pod_dir = ctx.work_dir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.slots: list[ContainerSlot] = []
        self._deleting = threading.Event()
        self._vanished = threading.Event()
        self._shutdown = threading.Event()
        self._posted: dict[str, Any] | None = None
        self._first_seen: Mapping[str, Any] = pod.get("status") or {}
        self._conditions: list[Mapping[str, Any]] = list(self._first_seen.get("conditions") or [])
        self._start_time = pod.get("status", {}).get("startTime") or now()
        self._said = ""

    # --- signals from the runner's watch (any thread) ---------------------------------------
    def update(self, pod: Mapping[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._deleting.set()

    def vanish(self) -> None:
        self._vanished.set()

    def shutdown(self) -> None:
        self._shutdown.set()

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and s.process.returncode is None]

    # --- the thread ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._live()
        except Exception:  # a bug here must not take the runner down: fail this pod, keep going
            log.exception("%s: the local runner failed on this pod", self.label)
            for slot in self.slots:
                slot.stop(0)
            self._post_failed("LocalRunnerError", "the local runner hit an internal error; see its log")
        finally:
            shutil.rmtree(self.pod_dir, ignore_errors=True)
            self.on_done(self.uid)

    def _live(self) -> None:
        if self._deleting.is_set() or self._stopping():
            self._finish()
            return
        phase = self.pod.get("status", {}).get("phase", "Pending")
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if phase == "Running" and policy != "Always":
            self._post_failed("LocalRunnerRestarted", "the local runner restarted while this pod ran; its process "
                              "was lost and restartPolicy forbids running it again")
            self._wait_for_delete()
            return
        self._post(phase="Pending", views=[ContainerView(c["name"], str(c.get("image", "")))
                                           for c in self.pod["spec"]["containers"]])
        try:
            self._prepare(policy)
        except PodSpecError as err:
            log.warning("%s: cannot run it: %s (%s)", self.label, err, err.reason)
            self._post_failed(err.reason, str(err))
            self._wait_for_delete()
            return
        log.info("%s: starting %d container(s) at %s; log: %s", self.label, len(self.slots), self.pod_ip,
                 self.ctx.log_path(self.namespace, self.pod_name))
        for slot in self.slots:
            slot.start()
        while not self._stopping():
            for slot in self.slots:
                slot.tick(self.pod_ip)
            phase = phase_of(policy, [s.view for s in self.slots], restarting=any(s.restarting for s in self.slots))
            self._post(phase=phase, views=[s.waiting_view() for s in self.slots])
            if phase in ("Succeeded", "Failed"):
                self._wait_for_delete()
                return
            time.sleep(TICK_S)
        self._finish()

    def _prepare(self, policy: str) -> None:
        spec = self.pod["spec"]
        if spec.get("initContainers"):
            raise PodSpecError("UnsupportedInitContainers", "the local runner does not run initContainers")
        if spec.get("hostNetwork"):
            raise PodSpecError("UnsupportedHostNetwork", "hostNetwork pods are not supported by the local runner")
        volumes = prepare_volumes(self.ctx.kube, self.pod, self.pod_dir, self.ctx.pvc_root, self.pod_ip,
                                  self.ctx.host_ip)
        grace = min(float(spec.get("terminationGracePeriodSeconds", 30)), MAX_GRACE_S)
        restarts = {c["name"]: int(c.get("restartCount", 0)) + (0 if "waiting" in (c.get("state") or {"waiting": 1}) else 1)
                    for c in self._first_seen.get("containerStatuses") or []}  # a process lost by an earlier runner
        for container in spec["containers"]:
            mounts = mounts_of(container, volumes)
            rewrite = Rewriter(mounts, self.pod_ip)
            cwd = self.pod_dir / "cwd" / container["name"]
            home = self.pod_dir / "home"
            tmp = rewrite.path("/tmp") or str(self.pod_dir / "tmp")
            for folder in (cwd, home, Path(tmp)):
                folder.mkdir(parents=True, exist_ok=True)
            termination = self.pod_dir / "termination" / container["name"]
            forced = {**self.ctx.forced_env, "TRTOP_TERMINATION_LOG": str(termination), "HOSTNAME": self.pod_name,
                      "TMPDIR": tmp}
            process = build_process(self.pod, container, rewrite=rewrite, host_ip=self.ctx.host_ip,
                                    base_env={**self.ctx.base_env, "HOME": str(home)}, forced_env=forced,
                                    default_cwd=str(cwd), lookup=self._lookup)
            self.slots.append(ContainerSlot(
                container, process, log_path=self.ctx.log_path(self.namespace, self.pod_name),
                termination_file=termination, restart_policy=policy, grace=grace, pod_label=self.label,
                restart_count=restarts.get(container["name"], 0)))

    def _lookup(self, kind: str, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            return lookup_data(self.ctx.kube, kind, namespace, name)
        except KubeError as err:
            raise PodSpecError("CreateContainerConfigError", f"reading {kind.lower()} {name!r}: {err}") from err

    # --- endings ---------------------------------------------------------------------------
    def _stopping(self) -> bool:
        return self._deleting.is_set() or self._vanished.is_set() or self._shutdown.is_set()

    def _wait_for_delete(self) -> None:
        while not self._stopping():
            time.sleep(TICK_S)
        self._finish()

    def _finish(self) -> None:
        """Stop the processes; on a deletion post their end and do the kubelet's final delete."""
        if self._vanished.is_set():
            self._stop_all(VANISHED_GRACE_S)
            log.info("%s: gone from the API; its processes are stopped", self.label)
            return
        meta = self.pod["metadata"]
        asked = meta.get("deletionGracePeriodSeconds")
        spec_grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = min(float(asked if asked is not None else spec_grace), MAX_GRACE_S)
        self._stop_all(grace)
        if self._deleting.is_set():
            if self.slots:  # like kubelets since 1.27: a deleted pod ends in a terminal phase
                views = [s.view for s in self.slots]
                self._post(phase=phase_of("Never", views, restarting=False), views=views)
            for attempt in range(5):
                try:
                    self.ctx.kube.delete(pod_path(self.namespace, self.pod_name), final_delete(self.uid))
                    break
                except KubeError as err:
                    log.warning("%s: final delete failed (attempt %d of 5): %s", self.label, attempt + 1, err)
                    time.sleep(1.0)
            log.info("%s: deleted (processes stopped)", self.label)
        elif self.slots and self._posted and self._posted.get("phase") not in ("Succeeded", "Failed"):
            self._post(phase="Running", views=[s.view for s in self.slots], reason="LocalRunnerStopped",
                       message="the local runner stopped; this pod's processes are gone")

    def _stop_all(self, grace: float) -> None:
        running = [s for s in self.slots if s.process is not None and s.view.state == "running"]
        stoppers = [threading.Thread(target=s.stop, args=(grace,), daemon=True) for s in running]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for slot in self.slots:
            slot.restart_at = None

    # --- status ----------------------------------------------------------------------------
    def _post_failed(self, reason: str, message: str) -> None:
        views = [s.view for s in self.slots] or [ContainerView(c["name"], str(c.get("image", "")))
                                                 for c in self.pod["spec"]["containers"]]
        status = failed_status(reason=reason, message=message, views=views, host_ip=self.ctx.host_ip,
                               start_time=self._start_time, previous_conditions=self._conditions, at=now())
        self._send(status)

    def _post(self, *, phase: str, views: list[ContainerView], reason: str | None = None,
              message: str | None = None) -> None:
        status = pod_status(phase=phase, views=views, pod_ip=self.pod_ip, host_ip=self.ctx.host_ip,
                            start_time=self._start_time, previous_conditions=self._conditions, at=now(),
                            reason=reason, message=message)
        self._send(status)

    def _send(self, status: dict[str, Any]) -> None:
        if status == self._posted or self._vanished.is_set():
            return
        try:
            self.ctx.kube.patch(pod_path(self.namespace, self.pod_name, "status"), {"status": status})
        except KubeError as err:
            if err.status == 404:
                self._vanished.set()
            else:
                log.warning("%s: could not post its status (will retry): %s", self.label, err)
            return
        self._posted = status
        self._conditions = status["conditions"]
        self._say(status)

    def _say(self, status: Mapping[str, Any]) -> None:
        """One log line per transition a person cares about: phase, readiness, restarts."""
        statuses = status.get("containerStatuses") or []
        ready = all(c["ready"] for c in statuses) and bool(statuses)
        restarts = sum(c["restartCount"] for c in statuses)
        said = f"{status['phase']}{', ready' if ready else ''}{f', {restarts} restart(s)' if restarts else ''}"
        if said == self._said:
            return
        self._said = said
        detail = ""
        ended = [c["state"]["terminated"] for c in statuses if c["state"].get("terminated")]
        if status["phase"] in ("Succeeded", "Failed") and ended:
            detail = f" (exit code {ended[0]['exitCode']}, {ended[0]['reason']})"
        log.info("%s: %s%s", self.label, said, detail)
