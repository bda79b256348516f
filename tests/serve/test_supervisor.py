"""The engine process's care of its front-ends (``supervisor``), with real processes: what a front-end killed
again and again leaves in the engine process (descriptors, arenas, threads, /dev/shm), how fast one that keeps
dying at start is restarted, and how long a stop may take when a batch is stuck in the backend."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import ServerProcess
from .test_frontends import SLOW, Start, _binary, frontends, wait_for

pytestmark = pytest.mark.slow


def held(pid: int) -> dict[str, int]:
    """What the engine process holds: open descriptors, threads, arena mappings, shared pages; and /dev/shm."""
    status = Path(f"/proc/{pid}/status").read_text()
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": len(os.listdir(f"/proc/{pid}/task")),
            "arenas": maps.count("memfd:trtop-frontend"),
            "shmem_kb": int(re.search(r"RssShmem:\s+(\d+)", status).group(1)),  # type: ignore[union-attr]
            "dev_shm": len(os.listdir("/dev/shm"))}


def post(url: str, value: float, rows: int = 1, timeout: float = 30) -> object:
    body, headers = _binary(np.full((rows, 4), value, np.float32))
    try:
        return httpx.post(url + "/v2/models/a/infer", content=body, headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        return exc


def test_a_frontend_killed_again_and_again_leaves_nothing_behind_in_the_engine(start_server: Start,
                                                                                affine_onnx: Path) -> None:
    """Each replacement used to get a new arena while the engine kept every old one mapped, with its pages and a
    descriptor: 8 deaths, 8 arenas more (~14 MB of shared pages each here). Now a replacement takes the arena of
    a front-end gone once the engine has answered its requests."""
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2", "--backend", SLOW,
                      "--max-inflight-mb", "32", "--max-body-mb", "4", "--max-batch", "200000",
                      "--buckets", "1,200000"],  # two buckets: warming 19 (0.05 s a run) outlasted 30 s on CI
                     {"FAKE_RUN_DELAY_S": "0.05"})
    s.wait_ready()
    wait_for(lambda: len(frontends(s)) == 2, 10, "two front-end processes")

    def round_of_deaths() -> None:
        for _ in range(2):  # both front-ends' arenas touched, most likely
            assert all(isinstance(r, httpx.Response) and r.status_code == 200
                       for r in [post(s.url, 1.0, rows=200_000) for _ in range(3)])
        victim = frontends(s)[0]  # the oldest: the two front-ends by turns
        in_flight = threading.Thread(target=post, args=(s.url, 2.0, 200_000))
        in_flight.start()
        time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)
        in_flight.join(30)
        wait_for(lambda: len(frontends(s)) == 2 and victim not in frontends(s), 20, "a replacement front-end")
        s.wait_ready()

    round_of_deaths()
    before = held(s.proc.pid)
    for _ in range(3):  # three more deaths: a leak would hold three arenas (~42 MB) more, past the 20 MB allowed
        round_of_deaths()
    time.sleep(0.5)
    after = held(s.proc.pid)
    assert after["fds"] <= before["fds"] and after["arenas"] <= before["arenas"], (before, after)
    assert after["threads"] <= before["threads"] and after["dev_shm"] <= before["dev_shm"], (before, after)
    assert after["shmem_kb"] <= before["shmem_kb"] + 20 * 1024, (before, after)  # not one arena's worth more
    assert isinstance(r := post(s.url, 3.0), httpx.Response) and r.status_code == 200
    assert s.proc.poll() is None


def test_a_frontend_that_keeps_dying_at_start_is_restarted_ever_more_slowly(start_server: Start,
                                                                             affine_onnx: Path,
                                                                             tmp_path: Path) -> None:
    """A front-end that died at once was restarted every 0.5 s for ever (a restart storm: a process, an arena and
    a log line each time); now the delay doubles while they die young, and it comes back once it can."""
    flag = tmp_path / "die"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(  # a front-end process (not the engine) dies at start while the flag is
        f"import os\nif 'TRTOP_FRONTEND_SETUP' in os.environ and os.path.exists({str(flag)!r}):\n    os._exit(3)\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2"], {"PYTHONPATH": path})
    s.wait_ready()
    wait_for(lambda: len(frontends(s)) == 2, 10, "two front-end processes")
    flag.touch()
    os.kill(frontends(s)[0], signal.SIGKILL)
    time.sleep(6)
    deaths = s.logs().count("exited with code")
    assert 2 <= deaths <= 5, f"{deaths} restarts in 6s:\n{s.logs()}"  # 0.5 s each: 9 or more
    assert isinstance(r := post(s.url, 1.0), httpx.Response) and r.status_code == 200  # the other serves
    flag.unlink()
    wait_for(lambda: len(frontends(s)) == 2, 20, "the front-end back once it can start")
    assert s.proc.poll() is None


@pytest.mark.parametrize("processes", ["2", "0"], ids=["frontends", "one-process"])
@pytest.mark.parametrize("second_signal", [False, True], ids=["timeout", "second-sigterm"])
def test_a_batch_stuck_in_the_backend_does_not_hold_the_stop_for_ever(start_server: Start, affine_onnx: Path,
                                                                      second_signal: bool, processes: str) -> None:
    """SIGTERM with a batch that never ends: the engine process waited for it for ever, a second SIGTERM
    notwithstanding. Now it exits (code 1) past the drain delay, the shutdown timeout and a short grace, or at
    a second signal; the stuck request's client is answered or disconnected. With front-ends or without."""
    shutdown_s = 60 if second_signal else 2
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", processes, "--backend", SLOW,
                      "--instances", "2", "--shutdown-timeout-s", str(shutdown_s)], {"FAKE_RUN_HANG_VALUE": "13"})
    s.wait_ready()
    wait_for(lambda: len(frontends(s)) == int(processes), 10, "the front-end processes")
    children = frontends(s)
    stuck: list[object] = []
    client = threading.Thread(target=lambda: stuck.append(post(s.url, 13.0, timeout=120)))
    client.start()
    time.sleep(1)
    assert isinstance(r := post(s.url, 1.0), httpx.Response) and r.status_code == 200  # the other instance serves
    s.terminate()
    if second_signal:
        time.sleep(2)
        assert s.proc.poll() is None  # still draining: the shutdown timeout is a minute
        s.terminate()
        assert s.wait_exit(5) == 1, s.logs()
        assert "a second stop signal" in s.logs()
    else:
        assert s.wait_exit(15) == 1, s.logs()
        assert "did not finish what was in flight" in s.logs()
    client.join(10)
    assert stuck and not client.is_alive()
    wait_for(lambda: not any(Path(f"/proc/{c}").exists() for c in children), 5, "no front-end left")


def test_an_engine_whose_loop_stops_makes_its_frontends_not_ready(start_server: Start, affine_onnx: Path) -> None:
    """A stopped engine process (SIGSTOP: as a loop that never returns) left the Python front-ends answering
    ready while every request waited for its timeout and 10 s more; now they say not ready once the engine's
    pings stop, and ready again when they come back."""
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2"])
    s.wait_ready()
    wait_for(lambda: len(frontends(s)) == 2, 10, "two front-end processes")
    time.sleep(1.5)  # the engine's first pings have come

    def ready() -> bool:
        return httpx.get(s.url + "/v2/health/ready", timeout=2).status_code == 200

    os.kill(s.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not ready() and not ready() and not ready(), 12, "front-ends not ready")
    finally:
        os.kill(s.proc.pid, signal.SIGCONT)
    wait_for(lambda: ready() and ready() and ready(), 10, "front-ends ready again")
    assert isinstance(r := post(s.url, 1.0), httpx.Response) and r.status_code == 200
