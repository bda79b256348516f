"""Keeping the cores awake while requests come: which cores, and real spinner processes that run only then."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from trtop import names
from trtop.serve.awake import (AUTO_CPU_MAX_RUN_S, AUTO_MAX_CORES, POLL_MIN_CORES, SPINNER_NAME, KeepAwake, awake_cores,
                               lone_run_max_s, poll_seconds)
from trtop.serve.runtime import cgroup_cpu_quota
from trtop.serve.settings import parse_settings

from .conftest import ServerProcess, cmdline, metric_value


@pytest.mark.parametrize("mode,gpu,cores,quota,expected", [
    ("auto", True, (0, 1, 2, 3), 4.0, (0, 1, 2, 3)),  # pinned to as many cores as its limit: the pod's own
    ("auto", False, (0, 1), 2.0, (0, 1)),  # CPU serving: if the model's lone run is short (lone_run_max_s)
    ("auto", True, (0, 1, 2, 3), 0.0, ()),  # no CPU limit: others' cgroups run on these cores
    ("auto", True, (0, 1, 2, 3), 2.0, ()),  # more cores than the limit: a shared pool, and the quota would throttle
    ("auto", True, (0, 1), 1.5, ()),  # two cores spinning would use more than 1.5
    ("auto", True, tuple(range(AUTO_MAX_CORES + 1)), float(AUTO_MAX_CORES + 1), ()),  # threads may wake anywhere
    ("on", False, (3, 1), 0.0, (1, 3)),  # asked for: every core of the process is the pod's own, sorted
    ("off", True, (0, 1), 2.0, ()),
])
def test_the_cores_kept_awake(mode: str, gpu: bool, cores: tuple[int, ...], quota: float,
                              expected: tuple[int, ...]) -> None:
    assert awake_cores(mode, cores=cores, cpu_quota=quota) == expected
    # on a GPU (or asked for) whatever the model's lone run; on CPU under auto only for a short one
    assert (lone_run_max_s(mode, gpu=gpu) is None) == (gpu or mode == "off")


def test_on_cpu_auto_and_on_keep_the_cores_awake_only_for_short_lone_runs() -> None:
    assert lone_run_max_s("auto", gpu=False) == AUTO_CPU_MAX_RUN_S
    assert lone_run_max_s("auto", gpu=True) is None and lone_run_max_s("on", gpu=True) is None
    assert lone_run_max_s("on", gpu=False) == AUTO_CPU_MAX_RUN_S  # on: the cores are the pod's own, no more
    short = KeepAwake((0,), lone_run_max_s=AUTO_CPU_MAX_RUN_S)
    assert short.suits(AUTO_CPU_MAX_RUN_S / 10)
    assert not short.suits(AUTO_CPU_MAX_RUN_S * 5) and not short.suits(None)  # MobileNetV2's 6 ms; not known
    assert KeepAwake((0,)).suits(None) and KeepAwake((0,)).suits(1.0)


def test_the_mode_is_a_setting() -> None:
    assert parse_settings([]).keep_awake == "auto"
    assert parse_settings([], {"TRTOP_KEEP_AWAKE": "off"}).keep_awake == "off"
    with pytest.raises(SystemExit):
        parse_settings(["--keep-awake", "always"])


def test_the_event_loop_polls_only_with_cores_to_spare_and_for_the_time_set() -> None:
    assert parse_settings([]).loop_poll_ms == 2.0
    assert parse_settings([], {"TRTOP_LOOP_POLL_MS": "0"}).loop_poll_ms == 0
    with pytest.raises(SystemExit):
        parse_settings(["--loop-poll-ms", "-1"])
    assert poll_seconds(2.0, range(POLL_MIN_CORES)) == pytest.approx(0.002)
    assert poll_seconds(2.0, range(12)) == pytest.approx(0.002)  # a GPU host's server cores
    assert poll_seconds(2.0, (0, 1)) == 0  # two cores: the one it would take, the front-end and client need
    assert poll_seconds(0.0, range(12)) == 0


def _state(pid: int) -> str:
    """The process's state letter: R running, S sleeping, T stopped."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _cpu_s(pid: int) -> float:
    """CPU time the process has run (schedstat: nanoseconds, where /proc/PID/stat counts 10 ms ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


async def _until(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_spinners_run_while_requests_come_and_stop_when_they_stop() -> None:
    cores = sorted(os.sched_getaffinity(0))[:4]
    reports: list[int] = []
    awake = KeepAwake(cores, hold_s=0.3, report=reports.append)
    await awake.start()
    procs = list(awake._procs.values())
    try:
        assert len(procs) == len(cores)
        for proc, core in zip(procs, cores):  # a shell's busy loop per core, lowest priority, named for the benchmarks
            assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(SPINNER_NAME.encode())
            assert os.sched_getaffinity(proc.pid) == {core}
            assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
            assert _state(proc.pid) == "T"  # stopped until the first request
        idle_cpu = sum(_cpu_s(p.pid) for p in procs)
        await asyncio.sleep(0.3)
        assert sum(_cpu_s(p.pid) for p in procs) - idle_cpu < 0.001  # an idle server burns nothing

        awake.touch()
        assert awake.spinning
        for _ in range(10):  # requests keep coming: they keep spinning past the hold time
            await asyncio.sleep(0.1)
            awake.touch()
            assert all(_state(p.pid) == "R" for p in procs)
        # they ran (on what the cores had idle: this process sleeps; on a machine busy with other work
        # SCHED_IDLE still gets its sliver)
        assert sum(_cpu_s(p.pid) for p in procs) - idle_cpu > 0.001

        await _until(lambda: all(_state(p.pid) == "T" for p in procs), timeout_s=2.0)  # no request: stopped
        assert not awake.spinning
        assert reports == [len(cores), 0]  # the metric followed: every core spinning, then none
    finally:
        awake.close()
    assert all(p.returncode is not None for p in procs)  # gone with the server


async def test_spinners_stand_down_while_requests_crowd_and_return_once_calm() -> None:
    """More rows waiting than cores kept awake: the server's threads are busy, the spinners only take the gaps
    between their work; they stop at once and start again only after ``calm_s`` without a crowd."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    reports: list[int] = []
    awake = KeepAwake(cores, hold_s=0.3, report=reports.append, calm_s=0.2)
    await awake.start()
    procs = list(awake._procs.values())
    try:
        awake.touch(1)  # a lone request: its own row waits, no more
        assert awake.spinning and all(_state(p.pid) == "R" for p in procs)
        awake.touch(len(cores))  # as many rows waiting as cores: still calm
        assert awake.spinning
        awake.touch(len(cores) + 1)  # a crowd: stopped at once
        assert not awake.spinning
        await _until(lambda: all(_state(p.pid) == "T" for p in procs), timeout_s=1.0)  # a stop takes a moment
        for _ in range(8):  # a crowd that goes on keeps them stopped, past the hold time
            await asyncio.sleep(0.05)
            awake.touch(1)  # a lone request among the crowd's does not start them
            assert not awake.spinning
            awake.touch(len(cores) + 4)
        crowd_ended = time.monotonic()

        def lone() -> bool:
            awake.touch(1)
            return awake.spinning

        await _until(lone, timeout_s=2.0)
        assert time.monotonic() - crowd_ended >= 0.2  # calm first
        assert all(_state(p.pid) == "R" for p in procs)
        assert reports == [len(cores), 0, len(cores)]
    finally:
        awake.close()


async def _cpu_over(seconds: float) -> float:
    """CPU seconds this process (its event loop) spent while the loop ran for ``seconds``."""
    before = time.process_time()
    await asyncio.sleep(seconds)
    return time.process_time() - before


async def test_the_event_loop_polls_after_a_request_until_the_hold_a_thread_batch_or_a_crowd() -> None:
    """While the cores are awake the loop does not sleep for ``poll_s`` after a request: it burns its core (the
    next descriptor finds it running). Not while a batch runs on a compute thread (the GIL), nor in a crowd."""
    cores = sorted(os.sched_getaffinity(0))[:1]
    thread_batch = [False]
    awake = KeepAwake(cores, hold_s=30, poll_s=0.3, calm_s=0.2)
    await awake.start(busy=lambda: thread_batch[0])
    try:
        assert await _cpu_over(0.2) < 0.05  # no request yet: the loop sleeps
        awake.touch(1)
        assert awake.polling
        assert await _cpu_over(0.2) > 0.1  # polling: the loop never waits
        await _until(lambda: not awake.polling, timeout_s=2.0)  # the hold passed without a request
        assert await _cpu_over(0.2) < 0.05

        awake.touch(1)
        assert awake.polling
        thread_batch[0] = True
        await asyncio.sleep(0.01)  # its next turn sees the batch
        assert not awake.polling and await _cpu_over(0.2) < 0.05
        thread_batch[0] = False

        awake.touch(len(cores) + 1)  # a crowd: the spinners stand down and the loop has work of its own
        assert not awake.spinning and not awake.polling
    finally:
        awake.close()

    never = KeepAwake(cores, hold_s=30)  # poll_s 0 (fewer than POLL_MIN_CORES, or --loop-poll-ms 0)
    await never.start()
    try:
        never.touch(1)
        assert never.spinning and not never.polling
    finally:
        never.close()


async def test_a_core_that_cannot_be_kept_awake_is_left_out_and_the_rest_serve() -> None:
    core = min(os.sched_getaffinity(0))
    missing = max(os.sched_getaffinity(0)) + 4096  # no such core: its spinner fails to pin itself
    awake = KeepAwake([core, missing], hold_s=0.3)
    started = time.monotonic()
    await awake.start()
    try:
        assert time.monotonic() - started < 3  # not held up by the one that failed
        assert list(awake._procs) == [core]
        awake.touch()
        assert _state(awake._procs[core].pid) == "R"
    finally:
        awake.close()


def _spinners(server: ServerProcess) -> list[int]:
    pid = server.proc.pid
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids if cmdline(k).startswith(SPINNER_NAME)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["on", "auto"])  # auto on CPU: the affine model's lone run is microseconds
async def test_a_server_keeps_its_cores_awake_while_it_serves_and_takes_the_spinners_with_it(
        start_server, affine_onnx: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    if mode == "auto" and not awake_cores("auto", cores=tuple(os.sched_getaffinity(0)), cpu_quota=cgroup_cpu_quota()):
        pytest.skip("auto keeps no core awake here: the cores are not the process's own (the first test)")
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--keep-awake", mode])
    s.wait_ready()
    spinners = _spinners(s)
    assert len(spinners) == len(os.sched_getaffinity(0)), s.logs()  # one per core of the server
    assert all(_state(p) == "T" for p in spinners)  # nothing served yet: nothing spins
    x = np.ones((1, 4), np.float32)
    async with httpx.AsyncClient() as client:
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
        answer = await client.post(f"{s.url}/v2/models/a/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert all(_state(p) == "R" for p in spinners)  # a request came (through a front-end process)
    async with httpx.AsyncClient() as client:  # and the pod's metrics say so
        text = (await client.get(f"{s.url}/metrics")).text
    assert metric_value(text, names.METRIC_CORES_AWAKE, model="a") == len(spinners)
    s.proc.kill()  # the engine dies without a word: its spinners go with it
    s.proc.wait(10)
    await _until(lambda: not any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in spinners))


@pytest.mark.slow
async def test_under_auto_a_server_leaves_cores_that_are_not_its_own_to_halt(
        start_server, affine_onnx: Path) -> None:  # type: ignore[no-untyped-def]
    """Without a CPU limit (or with more cores than it) other cgroups' tasks share the cores, and a SCHED_IDLE
    spinner competes with them at its cgroup's weight: auto starts none, and the log says why and what would."""
    if awake_cores("auto", cores=tuple(os.sched_getaffinity(0)), cpu_quota=cgroup_cpu_quota()):
        pytest.skip("here the cores are the process's own (a CPU limit of as many): auto keeps them awake")
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1"])
    s.wait_ready()
    async with httpx.AsyncClient() as client:
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 1.0, 1.0, 1.0]}]}
        assert (await client.post(f"{s.url}/v2/models/a/infer", json=body)).status_code == 200
        text = (await client.get(f"{s.url}/metrics")).text
    assert _spinners(s) == []
    assert metric_value(text, names.METRIC_CORES_AWAKE, model="a") == 0
    assert "cores not kept awake" in s.logs() and "--keep-awake on would" in s.logs()
