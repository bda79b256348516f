"""Pod status documents: phases, exit codes, termination messages, conditions."""
from __future__ import annotations

from trtop_dev.localrunner.status import (
    ContainerView, container_status, conditions, exit_code_of, log_tail, phase_of, pod_status, termination_message,
)

RUNNING = ContainerView("c", "img", state="running", started_at="t0", ready=True, started=True)


def test_exit_codes_of_signals_follow_the_kubelet() -> None:
    assert exit_code_of(0) == 0
    assert exit_code_of(3) == 3
    assert exit_code_of(-15) == 143
    assert exit_code_of(-9) == 137


def test_termination_message_from_the_file_or_the_log_tail() -> None:
    log = "\n".join(f"line {i}" for i in range(200))
    assert termination_message("File", '{"ok": true}', log, 1) == '{"ok": true}'
    assert termination_message("File", "", log, 1) == ""
    assert termination_message("FallbackToLogsOnError", "", log, 0) == ""
    tail = termination_message("FallbackToLogsOnError", "  ", log, 1)
    assert tail.splitlines() == [f"line {i}" for i in range(120, 200)]


def test_log_tail_is_at_most_4_kib() -> None:
    assert len(log_tail("x" * 10000).encode()) == 4096
    assert len(termination_message("File", "y" * 10000, "", 0)) == 4096


def test_phases() -> None:
    done0 = RUNNING.terminated(0, "", "t1")
    done1 = RUNNING.terminated(1, "", "t1")
    assert phase_of("Never", [ContainerView("c", "img")], restarting=False) == "Pending"
    assert phase_of("Never", [RUNNING, done0], restarting=False) == "Running"
    assert phase_of("Never", [done0, done0], restarting=False) == "Succeeded"
    assert phase_of("Never", [done0, done1], restarting=False) == "Failed"
    assert phase_of("OnFailure", [done1], restarting=True) == "Running"
    assert phase_of("Always", [done0], restarting=False) == "Running"


def test_container_status_sends_null_for_inactive_states() -> None:
    doc = container_status(RUNNING.terminated(3, "boom", "t1"))
    assert doc["state"] == {"waiting": None, "running": None,
                            "terminated": {"exitCode": 3, "reason": "Error", "message": "boom", "startedAt": "t0",
                                           "finishedAt": "t1"}}
    assert doc["ready"] is False
    assert container_status(RUNNING)["state"] == {"waiting": None, "running": {"startedAt": "t0"}, "terminated": None}


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    before = [{"type": "Ready", "status": "True", "lastTransitionTime": "old"},
              {"type": "PodScheduled", "status": "True", "lastTransitionTime": "sched"}]
    after = {c["type"]: c for c in conditions(before, {"Ready": False, "PodScheduled": True}, "now", "ContainersNotReady")}
    assert after["PodScheduled"]["lastTransitionTime"] == "sched"
    assert after["Ready"]["lastTransitionTime"] == "now"
    assert after["Ready"]["reason"] == "ContainersNotReady"


def test_pod_status_is_ready_only_when_every_container_is() -> None:
    common = dict(pod_ip="127.0.0.3", host_ip="127.0.0.1", start_time="t0", previous_conditions=[], at="t1")
    ready = {c["type"]: c["status"] for c in pod_status(phase="Running", views=[RUNNING, RUNNING], **common)["conditions"]}
    assert ready["Ready"] == ready["ContainersReady"] == "True"
    half = pod_status(phase="Running", views=[RUNNING, ContainerView("d", "img", state="running")], **common)
    assert {c["type"]: c["status"] for c in half["conditions"]}["Ready"] == "False"
    assert half["podIP"] == "127.0.0.3" and half["podIPs"] == [{"ip": "127.0.0.3"}]
