"""Pod status documents as a kubelet would post them (pure).

``ContainerView`` is what the runner knows of one container; ``pod_status`` turns the
views into the ``status`` of a strategic-merge patch on ``pods/status``: phase, the four
kubelet conditions, IPs and ``containerStatuses``. Inactive state kinds are sent as null
so a merge patch never leaves ``running`` beside ``terminated``. Called by
``trtop_dev.localrunner.pod``.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

State = Literal["waiting", "running", "terminated"]
LOG_TAIL_LINES = 80
MESSAGE_LIMIT = 4096  # the kubelet keeps at most 4 KiB of a termination message


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ContainerView:
    name: str
    image: str
    state: State = "waiting"
    reason: str = "ContainerCreating"  # waiting / terminated reason
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False  # the startup probe passed (or there is none) while running
    last_terminated: Mapping[str, Any] | None = field(default=None)

    def terminated(self, exit_code: int, message: str, at: str) -> ContainerView:
        return replace(self, state="terminated", reason=exit_reason(exit_code), message=message,
                       exit_code=exit_code, finished_at=at, ready=False, started=False)

    def terminated_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at,
                               "finishedAt": self.finished_at}
        if self.message:
            doc["message"] = self.message
        return doc


def exit_code_of(returncode: int) -> int:
    """Popen's returncode as the kubelet reports it: a signal N becomes 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def log_tail(text: str) -> str:
    """FallbackToLogsOnError's message: the last 80 lines, at most 4 KiB."""
    tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
    data = tail.encode()
    return data[-MESSAGE_LIMIT:].decode(errors="ignore") if len(data) > MESSAGE_LIMIT else tail


def termination_message(policy: str, file_text: str, log_text: str, exit_code: int) -> str:
    """The message the kubelet would report for a container that ended with ``exit_code``."""
    message = file_text.encode()[:MESSAGE_LIMIT].decode(errors="ignore")
    if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        return log_tail(log_text)
    return message


def phase_of(restart_policy: str, views: Sequence[ContainerView], *, restarting: bool) -> str:
    """Pod phase from its containers: Running while any runs or will restart, then Succeeded/Failed."""
    if restarting or any(v.state == "running" for v in views):
        return "Running"
    if not views or any(v.state == "waiting" for v in views):
        return "Pending"
    if restart_policy == "Always":
        return "Running"  # a restart is coming
    return "Succeeded" if all(v.exit_code == 0 for v in views) else "Failed"


def container_status(view: ContainerView) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": None, "running": None, "terminated": None}
    if view.state == "running":
        state["running"] = {"startedAt": view.started_at}
    elif view.state == "terminated":
        state["terminated"] = view.terminated_doc()
    else:
        state["waiting"] = {"reason": view.reason, **({"message": view.message} if view.message else {})}
    return {
        "name": view.name, "image": view.image, "imageID": "", "containerID": f"local://{view.name}",
        "ready": view.ready, "started": view.started, "restartCount": view.restart_count, "state": state,
        "lastState": {"terminated": dict(view.last_terminated)} if view.last_terminated else {"terminated": None},
    }


def conditions(previous: Sequence[Mapping[str, Any]], wanted: Mapping[str, bool], at: str,
               reason: str = "") -> list[dict[str, Any]]:
    """Conditions of ``wanted`` type -> status; lastTransitionTime kept while the status holds."""
    before = {c.get("type"): c for c in previous}
    out = []
    for kind, ok in wanted.items():
        status = "True" if ok else "False"
        old = before.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else at
        item: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": since or at,
                                "lastProbeTime": None}
        if not ok and reason and kind in ("Ready", "ContainersReady"):
            item["reason"] = reason
        out.append(item)
    return out


def pod_status(*, phase: str, views: Sequence[ContainerView], pod_ip: str, host_ip: str, start_time: str,
               previous_conditions: Sequence[Mapping[str, Any]], at: str, reason: str | None = None,
               message: str | None = None, init_views: Sequence[ContainerView] = ()) -> dict[str, Any]:
    """The ``status`` of a pods/status patch."""
    all_ready = bool(views) and all(v.ready for v in views)
    unready = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
    initialized = all(v.state == "terminated" and v.exit_code == 0 for v in init_views)
    wanted = {"PodReadyToStartContainers": True, "Initialized": initialized,
              "ContainersReady": all_ready, "Ready": all_ready, "PodScheduled": True}
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(previous_conditions, wanted, at, unready),
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip or None, "podIPs": [{"ip": pod_ip}] if pod_ip else None,
        "startTime": start_time,
        "containerStatuses": [container_status(v) for v in views],
        "reason": reason, "message": message,
    }
    if init_views:
        status["initContainerStatuses"] = [container_status(v) for v in init_views]
    return status


def failed_status(*, reason: str, message: str, views: Sequence[ContainerView], host_ip: str, start_time: str,
                  previous_conditions: Sequence[Mapping[str, Any]], at: str) -> dict[str, Any]:
    """A pod the runner cannot run: Failed, each container terminated with the reason."""
    ended = [replace(v, state="terminated", reason=reason, message=message, exit_code=v.exit_code or 1,
                     started_at=v.started_at or at, finished_at=at, ready=False) for v in views]
    return pod_status(phase="Failed", views=ended, pod_ip="", host_ip=host_ip, start_time=start_time,
                      previous_conditions=previous_conditions, at=at, reason=reason, message=message)
