"""Keep the pod's cores awake while requests come: no halted core to wake on a request's path.

On a virtual machine a core with nothing to run halts, and waking it (an interrupt through the
hypervisor) costs tens of microseconds. A lone request wakes a sleeping thread at every hand-over
on its way (the front-end, the engine's event loop, the GPU slot's thread and back) and each of
them has slept for about a run of the engine, long enough for its core to halt. On the H200 host
(a 16-core VM), ResNet-50 at one client: busy loops at the lowest priority on every core took the
request's p50 from 2.13 to 1.49 ms (Python front-ends) and from 1.82 to 1.43 ms (native), of
which the server's own cores gave 1.82 -> 1.54 (docs/server-measured.md, ninth session).

So while requests come, one spinner per core of the server runs a busy loop as ``SCHED_IDLE``:
among the pod's own processes the kernel runs it only when nothing else wants that core and preempts it at
once when something does (a woken thread finds its core running, not halted). The spinners are stopped
(``SIGSTOP``) once no request has come for ``HOLD_S``, so an idle pod burns nothing, and started again
(``SIGCONT``) by the next request.

``SCHED_IDLE`` orders tasks only within their cgroup. Against another cgroup's tasks (another pod's container,
the kubelet, a node agent) the spinners' cgroup competes at its full weight: on the development machine a
spinner in one cpu cgroup took 50% of a core from a busy task in another cgroup of the same weight (none with
the spinner's cgroup marked ``cpu.idle``, which a pod cannot do to its own cgroup), and a client in another
session (autogroup) on a core the server spun on waited whole scheduler slices: one connection's p99 went to
8 ms (0.6 ms with the cores left to halt; docs/server-measured.md, fortieth session). So ``auto`` keeps cores
awake only where they are the pod's own: the process is pinned to no more cores than its CPU limit (a
Guaranteed pod's container under the kubelet's static CPU manager policy gets exclusive cores, pinned, with a
quota of as many), and on at most ``AUTO_MAX_CORES``. There no other pod runs on them, and spinning on N cores
never uses more than a quota of N, so nothing of the pod's own work is throttled for it. Without a CPU limit,
or with more cores than the limit (a shared pool), ``auto`` leaves the cores to halt. ``on`` takes every core of
the process as the pod's own (a node or cores given to the server alone) and spins on them wherever ``auto`` would
on its own cores; ``off`` never (``--keep-awake``, settings). Where it spins, the pod shows its cores busy while
traffic flows. On a GPU, and on CPU for a model whose lone run (batch 1, timed at load) is under
``AUTO_CPU_MAX_RUN_S``, a wake-up's tens of microseconds are a large part of a request (a light model's lone
request on two cores: 0.75 -> 0.42 ms; MobileNetV2's, 6-8 ms of compute, gained nothing, and with both cores
spinning took 8.3 ms against 4.8-5.3), so ``auto`` and ``on`` spin on CPU only for such a model.

They stand down while requests crowd: a request that finds more rows waiting in the queue than there are
cores kept awake (``touch(waiting_rows)``) stops them at once, and they start again only once ``CALM_S``
has passed without such a request. With work queued the server's threads go from one batch to the next
instead of sleeping, so there is little to wake, while the spinners still took the gaps between: on the
development machine's two cores a light model at 64 connections served ~12% more with them off (10,795 and
10,615 against 9,297 and 9,660 req/s, native front-ends). On an H200 host at 64-128 clients it made no
difference beyond the spread between server starts (thirty-second session, docs/server-measured.md).

A spinner keeps a core from halting, but the engine's event loop still sleeps in ``epoll_wait`` between
requests, and a front-end's descriptor must wake it: the sender's write pays for the wake-up and the loop
comes back with cold caches. So while the cores are kept awake, the loop also polls for ``poll_s``
(``--loop-poll-ms``) after each request: a callback that queues itself again keeps the loop's wait at zero,
and the next descriptor is read within a turn. On an H100 host (12 server cores) a lone ResNet-50 request's
one-client window took +0.354 ms over the engine's batch 1 (median of six fresh servers) against +0.463 without
(five), at 128 clients it served as much; the paired judgement moved less (+0.328 against +0.347). On the
development machine's two cores the descriptor's hop went from 33 to 8 us and each of the engine's steps
took 14-41% less with its caches warm, but there the polling loop took a core from the front-end and the
client: at one connection p99 went from 0.6 to 2.3 ms, and at 64 connections it served 8-12% less
(docs/server-measured.md, thirty-fourth session). So it polls only with ``POLL_MIN_CORES`` cores kept awake
or more, never on two. It stops while a batch runs on a compute thread: that thread needs the GIL when its
batch ends, and a loop that polls would hold it (Python hands the GIL over on request only after the switch
interval, 5 ms).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

AUTO_MAX_CORES = 16
AUTO_CPU_MAX_RUN_S = 0.001  # CPU serving under auto: only for models whose lone run is shorter
HOLD_S = 1.0  # spinners stop after this long without a request
# ... and stand down until this long has passed without a request that found a crowd (a few start/stop
# rounds a second at most where requests hover at the crowd's edge: a signal to each spinner a round)
CALM_S = 0.25
START_TIMEOUT_S = 5.0
POLL_MIN_CORES = 4  # the event loop polls only with this many cores kept awake (it takes one of them)
SPINNER_NAME = "trtop-keep-awake"  # argv[0] of the spinners (benchmarks leave them out of the server's CPU)

# Runs in each spinner: its core and the lowest priority, killed with its parent, then a shell that stops
# itself (until the first request) and then loops (a small process; no interpreter kept).
_SPINNER = f"""
import ctypes, os, signal, sys
os.sched_setaffinity(0, {{int(sys.argv[1])}})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[2]):
    sys.exit(0)  # the parent went away before prctl
try:
    os.execv("/bin/sh", ["{SPINNER_NAME}", "-c", "kill -STOP $$; while :; do :; done"])
except OSError:
    os.kill(os.getpid(), signal.SIGSTOP)
    while True:
        pass
"""


def awake_cores(mode: str, *, cores: Sequence[int], cpu_quota: float) -> tuple[int, ...]:
    """The cores that may be kept awake: ``cores`` is the process's affinity, ``cpu_quota`` the cgroup's CPU
    limit in cores as set (0: none). Under ``auto`` only cores that are the pod's own: no more of them than the
    limit. Whether they are kept awake depends on the device too: on CPU (``auto`` and ``on``) only if the model's
    lone run is short enough (``lone_run_max_s``, decided once it is loaded)."""
    own = 0 < len(cores) <= min(cpu_quota, AUTO_MAX_CORES)
    wanted = mode == "on" or (mode == "auto" and own)
    return tuple(sorted(cores)) if wanted else ()


def poll_seconds(poll_ms: float, cores: Sequence[int]) -> float:
    """How long the event loop polls after a request (``--loop-poll-ms``) with ``cores`` kept awake: 0 on fewer
    than ``POLL_MIN_CORES``, where the core it takes is one that the front-ends and the client need."""
    return poll_ms / 1000 if len(cores) >= POLL_MIN_CORES else 0.0


def lone_run_max_s(mode: str, *, gpu: bool) -> float | None:
    """The lone run (batch 1, seconds) under which the cores are kept awake; None: whatever it is. ``on`` says only
    that the cores are the pod's own (``awake_cores``): where the spinners help is decided as under ``auto``."""
    return AUTO_CPU_MAX_RUN_S if mode in ("auto", "on") and not gpu else None


class KeepAwake:
    """Spinners on ``cores``; ``touch`` on every request (cheap: a flag), ``start`` in the event loop."""

    def __init__(self, cores: Sequence[int], hold_s: float = HOLD_S,
                 report: Callable[[int], None] | None = None, lone_run_max_s: float | None = None,
                 calm_s: float = CALM_S, poll_s: float = 0.0) -> None:
        self.cores = tuple(cores)
        self.poll_s = poll_s  # the event loop polls this long after each request while the cores are awake (0: never)
        self.lone_run_max_s = lone_run_max_s  # kept awake only for a model whose lone run is shorter (None: any)
        self._report = report or (lambda cores: None)  # the cores spinning now, on every change (a metric)
        self._hold_s = hold_s
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # core -> its spinner
        self._spinning = False
        self._touched = False
        self._calm_s = calm_s
        self._crowd_at = -math.inf  # when a request last found more rows waiting than cores kept awake
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy: Callable[[], bool] = lambda: False  # a batch runs on a compute thread (start's ``busy``)
        self._polling = False
        self._poll_until = 0.0

    @property
    def spinning(self) -> bool:
        return self._spinning

    def suits(self, lone_run_s: float | None) -> bool:
        """Whether a model whose lone run takes ``lone_run_s`` (None: not known) is served with the cores awake."""
        return self.lone_run_max_s is None or (lone_run_s is not None and lone_run_s < self.lone_run_max_s)

    @property
    def polling(self) -> bool:
        return self._polling

    async def start(self, busy: Callable[[], bool] | None = None) -> None:
        """Spawn the spinners and wait until each has stopped itself (they run from the first request on).
        ``busy``: whether a batch runs on a compute thread now (the event loop does not poll meanwhile)."""
        self._loop = asyncio.get_running_loop()
        if busy is not None:
            self._busy = busy
        me = str(os.getpid())
        for core in self.cores:
            try:
                self._procs[core] = subprocess.Popen([sys.executable, "-c", _SPINNER, str(core), me],
                                                     stdin=subprocess.DEVNULL, close_fds=True)
            except OSError as exc:
                log.warning("cannot keep core %d awake (%s); serving without it", core, exc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while (any(_state(p.pid) not in ("T", "Z", "gone") for p in self._procs.values())
               and time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        for core, proc in list(self._procs.items()):
            if _state(proc.pid) != "T":  # it failed (its reason is in the log)
                log.warning("cannot keep core %d awake: its spinner did not start; serving without it", core)
                proc.kill()
                proc.wait()
                del self._procs[core]
        if self._procs:
            log.info("keeping %d core(s) awake while requests come: %s%s", len(self._procs),
                     ",".join(map(str, self._procs)),
                     f"; the event loop polls {self.poll_s * 1e3:g} ms after each request" if self.poll_s else "")
        self._timer = self._loop.call_later(self._hold_s, self._check)

    def touch(self, waiting_rows: int = 0) -> None:
        """A request came, finding ``waiting_rows`` rows in the queue (its own included): cores awake from now
        until ``hold_s`` without one, unless requests crowd (more rows waiting than cores kept awake)."""
        self._touched = True
        if waiting_rows > len(self._procs):
            self._crowd_at = time.monotonic()
            if self._spinning:
                self._stop()
        elif not self._spinning and self._procs and time.monotonic() - self._crowd_at >= self._calm_s:
            self._spinning = True
            self._signal(signal.SIGCONT)
            self._report(len(self._procs))
        if self._spinning and self.poll_s:
            self._poll_until = time.monotonic() + self.poll_s
            if not self._polling and self._loop is not None:
                self._polling = True
                self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        """One turn of the event loop's polling: queued again (the loop then waits for nothing) until the cores
        stand down, a batch runs on a compute thread or ``poll_s`` has passed since the last request."""
        if not self._spinning or self._busy() or time.monotonic() > self._poll_until:
            self._polling = False
            return
        assert self._loop is not None
        self._loop.call_soon(self._poll)

    def _stop(self) -> None:
        self._spinning = False
        self._signal(signal.SIGSTOP)
        self._report(0)

    def _check(self) -> None:
        if self._spinning and not self._touched:
            self._stop()
        self._touched = False
        assert self._loop is not None
        self._timer = self._loop.call_later(self._hold_s, self._check)

    def _signal(self, sig: int) -> None:
        for proc in self._procs.values():
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for proc in self._procs.values():
            proc.kill()
        for proc in self._procs.values():
            proc.wait()
        self._procs.clear()
        self._spinning = False
        self._report(0)


def _state(pid: int) -> str:
    """A process's state letter (R running, S sleeping, T stopped), "gone" when it has exited."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "gone"

