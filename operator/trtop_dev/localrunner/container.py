"""One container of a pod under the runner: its process, probes, restarts and reported view.

``tick()`` is called a few times a second by the pod's worker: it notices an exit (reading
the termination message), restarts per restartPolicy with an exponential back-off, and
runs the startup, liveness and readiness probes that are due. Called by
``trtop_dev.localrunner.pod``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from trtop_dev.localrunner.podspec import ProcessSpec
from trtop_dev.localrunner.probes import Prober, check
from trtop_dev.localrunner.process import ContainerProcess
from trtop_dev.localrunner.status import ContainerView, exit_code_of, now, termination_message

log = logging.getLogger(__name__)

BACKOFF_START_S = 2.0  # the kubelet starts at 10 s; shorter here so a dev loop stays quick
BACKOFF_MAX_S = 60.0  # the kubelet caps at 300 s
BACKOFF_RESET_S = 300.0  # a run this long forgets earlier crashes
LOG_TAIL_BYTES = 65536


class ContainerSlot:
    """A container's lifecycle; ``view`` is what goes into containerStatuses."""

    def __init__(self, container: Mapping[str, Any], spec: ProcessSpec, *, log_path: Path, termination_file: Path,
                 restart_policy: str, grace: float, pod_label: str, restart_count: int = 0) -> None:
        self.container, self.spec = container, spec
        self.log_path, self.termination_file = log_path, termination_file
        self.restart_policy, self.grace, self.pod_label = restart_policy, grace, pod_label
        self.view = ContainerView(name=container["name"], image=str(container.get("image", "")),
                                  restart_count=restart_count)
        self.process: ContainerProcess | None = None
        self.restart_at: float | None = None
        self._backoff = BACKOFF_START_S
        self._waiting_s = 0.0
        self._started_mono = 0.0
        self._startup: Prober | None = None
        self._liveness: Prober | None = None
        self._readiness: Prober | None = None

    @property
    def restarting(self) -> bool:
        return self.restart_at is not None

    @property
    def finished(self) -> bool:
        return self.view.state == "terminated" and not self.restarting

    def start(self) -> None:
        self.termination_file.parent.mkdir(parents=True, exist_ok=True)
        self.termination_file.write_text("")
        banner = f"{self.pod_label} container {self.view.name} start #{self.view.restart_count} at {now()}"
        self._started_mono = mono = time.monotonic()
        try:
            self.process = ContainerProcess(self.spec, self.log_path, banner)
        except OSError as err:  # the kubelet's StartError: exit code 128, like a missing executable in a container
            self.process, self.restart_at = None, None
            self.view = replace(self.view, started_at=now())
            self._exited(128, f"cannot start {self.spec.argv[0]!r}: {err.strerror or err}")
            self.view = replace(self.view, reason="StartError")
            log.warning("%s: container %s: %s", self.pod_label, self.view.name, self.view.message)
            return
        probes = {k: self.container.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        self._startup = Prober(probes["startupProbe"], mono) if probes["startupProbe"] else None
        self._liveness = Prober(probes["livenessProbe"], mono) if probes["livenessProbe"] else None
        self._readiness = Prober(probes["readinessProbe"], mono) if probes["readinessProbe"] else None
        self.restart_at = None
        self.view = replace(self.view, state="running", reason="", message="", started_at=now(), finished_at=None,
                            exit_code=None, ready=False, started=self._startup is None)

    def tick(self, pod_ip: str) -> None:
        mono = time.monotonic()
        if self.restart_at is not None and mono >= self.restart_at:
            self.view = replace(self.view, restart_count=self.view.restart_count + 1,
                                last_terminated=self.view.terminated_doc())
            self.start()
            return
        if self.process is None or self.view.state != "running":
            return
        code = self.process.poll()
        if code is not None:
            self._exited(code, "")
            return
        self._probe(pod_ip, mono)

    def stop(self, grace: float) -> None:
        """Stop for good (pod deleted, runner stopping): no restart follows."""
        self.restart_at = None
        if self.process is not None and self.view.state == "running":
            code = self.process.stop(grace)
            self._exited(code, "", restart=False)

    def _probe(self, pod_ip: str, mono: float) -> None:
        if self._startup is not None and not self.view.started:
            if self._startup.due(mono):
                self._startup.record(*check(self._startup.probe, self.container, pod_ip), mono)
                if self._startup.passing:
                    self.view = replace(self.view, started=True)
                    self._shift_after_startup(mono)
                elif self._startup.failed_out:
                    self._kill(f"startup probe failed: {self._startup.last_error}")
            return
        if self._liveness is not None and self._liveness.due(mono):
            self._liveness.record(*check(self._liveness.probe, self.container, pod_ip), mono)
            if self._liveness.failed_out:
                self._kill(f"liveness probe failed: {self._liveness.last_error}")
                return
        if self._readiness is None:
            ready = True
        else:
            if self._readiness.due(mono):
                self._readiness.record(*check(self._readiness.probe, self.container, pod_ip), mono)
            ready = self._readiness.passing
        if ready != self.view.ready:
            self.view = replace(self.view, ready=ready)

    def _shift_after_startup(self, mono: float) -> None:
        # Liveness and readiness start counting their initial delay once startup has passed.
        for prober in (self._liveness, self._readiness):
            if prober is not None:
                prober.next_at = mono + float(prober.probe.get("initialDelaySeconds", 0))

    def _kill(self, why: str) -> None:
        log.info("%s: container %s: %s; stopping it", self.pod_label, self.view.name, why)
        assert self.process is not None
        code = self.process.stop(self.grace)
        self._exited(code, why)

    def _exited(self, returncode: int, why: str, *, restart: bool = True) -> None:
        exit_code = exit_code_of(returncode)
        message = why or termination_message(self.container.get("terminationMessagePolicy", "File"),
                                              _read(self.termination_file), self._log_text(), exit_code)
        self.view = self.view.terminated(exit_code, message, now())
        ran = time.monotonic() - self._started_mono
        if ran >= BACKOFF_RESET_S:
            self._backoff = BACKOFF_START_S
        wants = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and exit_code != 0)
        if restart and wants:
            self.restart_at = time.monotonic() + self._backoff
            self._waiting_s = self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    def waiting_view(self) -> ContainerView:
        """The view to report: CrashLoopBackOff (with lastState) while a restart is pending."""
        if self.restart_at is None:
            return self.view
        return replace(self.view, state="waiting", reason="CrashLoopBackOff",
                       message=f"back-off {self._waiting_s:.0f}s restarting failed container={self.view.name}",
                       last_terminated=self.view.terminated_doc(), ready=False, started=False)

    def _log_text(self) -> str:
        offset = self.process.log_offset if self.process is not None else 0
        try:
            with self.log_path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(offset, size - LOG_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
