"""Waiting for a ``trtop serve`` that a benchmark started: until its ``/v2/health/ready`` says 200 (every bucket
warmed), the process exits, or the time is up. One loop for every bench script, so that each says the same
when a server does not come up."""
from __future__ import annotations

import subprocess
import time
import urllib.request
from typing import Callable


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float,
               why_exited: Callable[[], str] | None = None, poll_s: float = 0.2) -> None:
    """Return once ``url``/v2/health/ready answers 200. Raises RuntimeError when ``proc`` exits first (with
    ``why_exited()``, by default its stderr when piped: a log's tail where it writes to one), or after
    ``timeout_s``, having killed it: a benchmark never leaves a server behind that would take the cores of the
    next one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = why_exited() if why_exited is not None else proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited {proc.returncode}: {said}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while it warms (HTTPError is an OSError)
            pass
        time.sleep(poll_s)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"server not ready within {timeout_s:.0f} s")
