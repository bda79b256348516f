"""A container's process group: output to the log, SIGTERM then SIGKILL, nothing left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trtop_dev.localrunner.podspec import ProcessSpec
from trtop_dev.localrunner.process import ContainerProcess

PARENT = """
import subprocess, sys, time, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a process that ignores SIGTERM: SIGKILL must follow
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("child", child.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def spec(code: str, tmp_path: Path) -> ProcessSpec:
    return ProcessSpec(argv=(sys.executable, "-c", code), env={"PATH": os.environ["PATH"]}, cwd=str(tmp_path))


def test_output_goes_to_the_log_after_a_banner(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "ns_pod.log"
    process = ContainerProcess(spec("import os; print('cwd', os.getcwd())", tmp_path), log, "pod ns/pod start #0")
    while process.poll() is None:
        time.sleep(0.02)
    assert process.returncode == 0
    assert log.read_text() == f"--- local-runner: pod ns/pod start #0\ncwd {tmp_path}\n"


def test_stop_kills_the_whole_group_after_the_grace_period(tmp_path: Path) -> None:
    log = tmp_path / "pod.log"
    process = ContainerProcess(spec(PARENT, tmp_path), log, "start")
    deadline = time.monotonic() + 20
    while "child " not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(log.read_text().split("child ")[1].split()[0])
    started = time.monotonic()
    code = process.stop(grace=0.5)
    assert code == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5
    assert not alive(process.pid)
    # SIGKILL to the group is delivered asynchronously: on a loaded machine the child may
    # take a moment to go.
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_an_exited_process_leaves_no_child_behind(tmp_path: Path) -> None:
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('child', c.pid, flush=True)")
    log = tmp_path / "pod.log"
    process = ContainerProcess(spec(code, tmp_path), log, "start")
    while process.poll() is None:
        time.sleep(0.02)
    child = int(log.read_text().split("child ")[1].split()[0])
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
