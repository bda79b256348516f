"""One container's local process: started in its own process group, output to the pod's log.

Stopping signals the whole group (a container's children die with it, as in a cgroup):
SIGTERM, up to the grace period, then SIGKILL. After the main process exits on its own the
group is killed too, so nothing it forked outlives it. Called by ``trtop_dev.localrunner.pod``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from trtop_dev.localrunner.podspec import ProcessSpec


class ContainerProcess:
    """A started process; ``poll()`` returns its returncode once it has ended."""

    def __init__(self, spec: ProcessSpec, log_path: Path, banner: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self._log.write(f"--- local-runner: {banner}\n".encode())
        self._log.flush()
        self.log_offset = self._log.tell()  # where this run's output starts (FallbackToLogsOnError)
        try:
            self._popen = subprocess.Popen(
                list(spec.argv), env=dict(spec.env), cwd=spec.cwd, stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError:
            self._log.close()
            raise
        self.pid = self._popen.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self._popen.poll()
            if code is not None:
                self._finish(code)
        return self.returncode

    def stop(self, grace: float) -> int:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL; returns the returncode."""
        if self.poll() is not None:
            return self.returncode  # type: ignore[return-value]
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.poll() is not None:
                return self.returncode  # type: ignore[return-value]
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        code = self._popen.wait()
        self._finish(code)
        return code

    def _finish(self, code: int) -> None:
        self.returncode = code
        self._signal(signal.SIGKILL)  # whatever the process left behind in its group
        if not self._log.closed:
            self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
