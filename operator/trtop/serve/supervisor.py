"""The engine process of a multi-process server: the model, the batcher and its front-ends.

One engine process per GPU holds the model and the one scheduler that batches every
request of the pod; N front-end processes (``frontend``) do the HTTP/gRPC work on other
cores, so Python's GIL serialises neither side (vLLM V1 splits its API server and engine
core the same way). The engine process binds the listening socket first (a port conflict
fails at once) and hands it to every front-end, which all accept on it; each front-end
gets its own shared arena and channel (``dispatcher``).

Lifecycle: front-ends start at once (liveness answers while the model loads); the model
loads and warms every bucket, then each front-end is told it is ready. A front-end that
dies is replaced; its in-flight requests are lost to their clients (their connections
closed with it) but nothing else is touched. SIGTERM: not ready everywhere, front-ends
drain (serve for the drain delay, stop accepting, answer what is in flight), then the
engine runs what is still queued and exits 0. A load failure exits 1 with the reason.
With the native HTTP front-end (``--http-frontend``, ``native/http``: Go), the N front-ends
on the public port are ``trtop-http`` processes: they answer binary infer requests and the
health probes themselves and forward every other request to the pod's Python front-ends,
which listen on a private unix socket. With ``--grpc-frontend`` auto or native they accept the
gRPC port too (one listening socket) and forward to one Python front-end's gRPC server on
another private unix socket; with ``python``, N Python front-ends serve gRPC on the port.
Both kinds get an arena and a channel of their own; the native one's speaks JSON.
Called by ``cli.run_server`` when ``--frontends`` is above 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from trtop.serve.arena import Arena
from trtop.serve.channel import JSON, PICKLE
from trtop.serve.dispatcher import Dispatcher
from trtop.serve.errors import StartupError
from trtop.serve.frontend import setup_env
from trtop.serve.heap import settle_heap
from trtop.serve.processes import (SINGLE_PROCESS_CORES, frontend_count, grpc_frontends, grpc_only_count, native_binary,
                                   native_grpc)
from trtop.serve.read_gate import ReadGate
from trtop.serve.runtime import default_threads
from trtop.serve.server import EXIT_STOP_FORCED, STOP_GRACE_S, create_service, dump_state
from trtop.serve.service import InferenceService
from trtop.serve.settings import ServeSettings

log = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 1
RESPAWN_DELAY_S = 0.5  # before a dead front-end's replacement; doubled for each one that dies young (below)
RESPAWN_MAX_DELAY_S = 15.0  # a front-end that keeps dying at start is restarted this often at most
RESPAWN_STABLE_S = 30.0  # a front-end that lived this long died of something new: the delay starts over
PING_INTERVAL_S = 1.0  # how often each front-end's event loop is asked for a pong (--frontend-stuck-s)
STUCK_DUMP_WAIT_S = 1.0  # a stuck Python front-end's stacks (SIGUSR2, faulthandler) are written meanwhile
ARENA_SLACK = 4 * 1024 * 1024  # room for outputs beside the largest body a front-end may hold


def arena_bytes(settings: ServeSettings, count: int) -> int:
    """Each front-end's share of the bytes in flight, never below one largest request."""
    share = int(settings.max_inflight_mb * 1024 * 1024) // max(1, count)
    return max(share, settings.max_body_bytes + ARENA_SLACK)


GROUP_LIMIT_GPU = 64  # a bound well above what the backlog lets out at once


# Go threads (GOMAXPROCS) of each native front-end. One: with more, each goroutine made ready on a lone
# request's way (the engine's reply, then the handler that answers) wakes another idle thread to look for
# work, which may take the goroutine to another core; a single thread runs it next, where it is. H200 host,
# ResNet-50, two native front-ends on 12 cores, paired windows (engine alone, then one client served): the
# server added 0.30-0.36 ms with one thread each against 0.42-0.51 ms with three (half the cores, the rule
# before), and served 4,797 / 5,134 img/s at 64 / 128 clients against 4,596 / 4,989 (docs/server-measured.md,
# fourteenth session). Parallelism comes from the front-end processes side by side (``--frontends``), and
# fewer Go threads leave the engine's CPU runs alone (all cores each, Go's default, cost MobileNetV2 +4 ms
# at one connection on two cores). A GOMAXPROCS in the server's environment wins.
NATIVE_GO_THREADS = 1
# Go threads of each native front-end that serves gRPC while its gRPC calls overlap (``--grpc-go-threads``; it
# runs NATIVE_GO_THREADS while they come one at a time: native/http/threads.go). A gRPC client sends all its calls
# on one connection and a connection stays where it landed, so one-thread front-ends left one core saturated and
# another idle (per-process cores 0.55 / 0.00 / 0.44 / 0.96). Two threads in each gRPC-only front-end, always: the
# H200 host's tiny model over gRPC ran 39,220 and 42,685 req/s at 256 in flight against 29,436 and 40,280 with one
# (windows at 128 of 25,108-34,176 with one, stable with two); an H100 host where connections landed evenly ran
# 48,868 against 50,941, and a lone call took 0.34 against 0.24 ms. Hence two only while calls overlap: on a second
# H200 host that served 30,989 against 17,604 with one thread always (docs/server-measured.md, thirty-first
# session). Not on two cores or fewer, where the engine, the front-ends and often the client share them: there two
# threads served 9,056-9,687 tiny gRPC calls a second at 64 in flight against 9,710-10,864 with one
# (bench/grpc_rate.py, development machine).
GRPC_GO_THREADS = 2


def grpc_go_threads(setting: int, cores: int) -> int:
    """Go threads of a native front-end while its gRPC calls overlap: the setting, else ``GRPC_GO_THREADS`` with
    more than ``SINGLE_PROCESS_CORES`` cores, else one (``NATIVE_GO_THREADS``, always)."""
    if setting > 0:
        return setting
    return GRPC_GO_THREADS if cores > SINGLE_PROCESS_CORES else NATIVE_GO_THREADS


def group_limit(instances: int, gpu: bool, setting: int = 0) -> int:
    """The most descriptors a native front-end keeps in flight; beyond them, and while the engine's backlog
    (rows queued beyond what every instance's next batch takes, reported with every answer) is positive,
    requests wait there and leave grouped (``native/http/group.go``).

    On CPU one per batch the engine may run at once and one more: there every descriptor's Python in the
    engine process takes a core from the model, and holding requests back to group them paid more than it
    cost (light model, 64 connections, 2 cores: 5,900-6,800 req/s against 4,800-6,000 with the backlog
    alone). On a GPU the backlog alone: a fixed few held requests back while the engine had room, and
    ResNet-50's batches at 64 clients shrank from 15 rows to 10 on the H200 host (0.73 against 0.90 x).
    ``setting`` (``--group-limit``) > 0 wins: with instances + 1 a tiny model's gRPC ran 1.2-2.8 x faster on
    the H200 and H100 hosts (37,891 and 61,987 req/s against 24,371 and 22,160 on one H100 host), and over HTTP
    the server answered ~40,000-49,000 requests a second, more than ``perf_analyzer``'s HTTP client could count
    on 4 or 8 cores (the twenty-sixth session's "stall"; docs/server-measured.md, twenty-eighth session). Large
    requests need the backlog alone (above), so on a GPU small ones get their own count: ``small_group_limit``."""
    if setting > 0:
        return setting
    return GROUP_LIMIT_GPU if gpu else max(1, instances) + 1


def small_group_limit(instances: int, gpu: bool, setting: int = 0, group_setting: int = 0) -> int:
    """The count of descriptors for small requests alone (judged by the first request waiting; what is small
    the engine decides once it has timed the model: ``settings.small_request_bytes``); 0: ``group_limit``'s.

    Small requests of a short model cost the engine's Python per descriptor, not the GPU, so on a GPU they get
    instances + 1 (CPU's rule) while the others keep the backlog's: on H100 hosts a tiny model's gRPC went from
    23,584 to 30,956 req/s (8 s windows) and its HTTP at 128 in flight from 16,979 to 41,814, while ResNet-50
    stayed where it was (4,289 against 4,328 img/s, 4,682 against 4,533; docs/server-measured.md, twenty-ninth
    session). ``setting`` (``--small-group-limit``) > 0 wins; an explicit ``--group-limit`` alone sets both."""
    if setting > 0:
        return setting
    return group_limit(instances, gpu=False) if gpu and group_setting == 0 else 0  # CPU's rule


def listen_socket(host: str, port: int, backlog: int, what: str = "") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (--grpc-port 0 turns gRPC off)" if what == "gRPC" else ""
        raise StartupError(f"cannot listen{' for ' + what if what else ''} on {host}:{port}: {exc}{hint}") from exc
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold the gRPC port for this pod's front-ends, which each listen on it with SO_REUSEPORT:
    bound with SO_REUSEPORT but never listening (the kernel hands connections only to listening
    sockets), so a port another program holds fails here at once instead of in every front-end."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen for gRPC on {host}:{port}: {exc} (--grpc-port 0 turns gRPC off)") from exc
    return sock


SETTLE_S = 10.0  # the longest the model's load waits for the front-ends to start (``Supervisor._settle``)


class Supervisor:
    def __init__(self, settings: ServeSettings, service: InferenceService, count: int, gpu: bool = False) -> None:
        self.settings = settings
        self.service = service
        self.count = count
        self.gpu = gpu  # the engine computes on a GPU (its CPU is free for descriptors)
        self.listen = listen_socket(settings.host, settings.port, min(settings.max_connections, 4096))
        self.native = native_binary(settings)
        # gRPC: the native front-ends accept on one listening socket, as for HTTP; Python front-ends each
        # listen on the port themselves (SO_REUSEPORT), the engine process holding it.
        self.native_grpc = native_grpc(settings, self.native)
        self.grpc_listen = (listen_socket(settings.host, settings.grpc_port, min(settings.max_connections, 4096),
                                          "gRPC") if self.native_grpc else None)
        self.grpc_hold = (reserve_port(settings.host, settings.grpc_port)
                          if settings.grpc_port and not self.native_grpc else None)
        # Native front-ends that accept gRPC only, beside those that accept both (indices count..).
        self.grpc_only = grpc_only_count(settings, count, self.native)
        # Python front-ends: all of them without the native one; beside it, those that serve gRPC (one
        # when gRPC is off or native) and answer what it forwards, on private unix sockets.
        self.python_count = count if self.native is None else grpc_frontends(settings, self.native)
        self.private = Path(tempfile.mkdtemp(prefix="trtop-serve-")) if self.native else None
        self.api = self._api_socket() if self.private else None
        self.arena_size = arena_bytes(settings, self._processes())
        self.dispatchers: dict[int, Dispatcher] = {}
        self.read_gate = ReadGate(lambda: [d.channel for d in self.dispatchers.values()])
        self.arenas: list[Arena] = []  # every arena made, also those of replaced front-ends (see _start_frontend)
        self._spare: list[Arena] = []  # arenas of front-ends gone, all their requests answered: the next ones'
        self._respawn_delay: dict[int, float] = {}  # by front-end index: the delay before its next replacement
        self._forced = asyncio.Event()  # a second SIGTERM/SIGINT: stop now
        self.forced = False  # the stop did not finish (``cli.run_server`` then exits without waiting for threads)
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self._stuck: set[int] = set()  # pids of front-ends being replaced because their loop stopped answering
        self.exit_code = 0
        self._watchers: set[asyncio.Task[None]] = set()
        self._done = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_shutdown)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_state)
        for i in range(self._processes()):
            await self._start_frontend(i)
        log.info("serving %r on %s:%d through %d %s front-end processes%s", self.service.name, self.settings.host,
                 self.settings.port, self.count, "native" if self.native else "Python",
                 f" (and {self.grpc_only} more for gRPC on :{self.settings.grpc_port})" if self.grpc_only else "")
        load = loop.create_task(self._load())
        checks = loop.create_task(self._check_frontends()) if self.settings.frontend_stuck_s > 0 else None
        await self._done.wait()
        if not load.done():
            load.cancel()
        if checks is not None:
            checks.cancel()
        await self._stop()
        self.listen.close()
        for held in (self.grpc_hold, self.grpc_listen):
            if held is not None:
                held.close()
        if self.api is not None:
            self.api.close()
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)
        return self.exit_code

    def state_line(self) -> str:
        """What the engine process holds right now, in words."""
        at_engine = ", ".join(f"{i}: {d.in_flight}" for i, d in sorted(self.dispatchers.items()))
        told = ", ".join(f"{i}: {d.helds}/{d.rooms}" for i, d in sorted(self.dispatchers.items()))
        return (f"{self.service.state_line()}; reading descriptors {'paused' if self.read_gate.closed else 'on'}; "
                f"requests at the engine by front-end {{{at_engine}}}; held / told of room by front-end {{{told}}}")

    def dump_state(self) -> None:
        """SIGUSR1 (``kill -USR1 <pid>``, or ``kubectl exec <pod> -- sh -c 'kill -USR1 1'``) for a server that seems
        stuck: the engine's state and every thread's stack to the log, then the same signal to each front-end,
        which writes its own (``native/http/dump.go``; a Python one's ``RemoteModel.state_line``), each process's
        stacks in one write so that they do not mix. Serving goes on."""
        dump_state(self.state_line())
        for index, proc in sorted(self.processes.items()):
            dispatcher = self.dispatchers.get(index)
            # A Python front-end that has not spoken yet may not have its handler: the signal would end it.
            if proc.returncode is None and (self._is_native(index) or (dispatcher is not None and dispatcher.heard)):
                proc.send_signal(signal.SIGUSR1)

    def _is_native(self, index: int) -> bool:
        return self.native is not None and index < self.count + self.grpc_only

    def _api_socket(self) -> socket.socket:
        assert self.private is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.private / "api.sock"))  # the folder is 0700: only this pod's processes reach it
        sock.listen(min(self.settings.max_connections, 4096))
        sock.set_inheritable(True)
        return sock

    def _processes(self) -> int:
        """Front-end processes: the native ones (both kinds) and the Python ones beside them, or the Python ones."""
        return self.count + (self.grpc_only + self.python_count if self.native else 0)

    def _grpc_path(self) -> Path:
        assert self.private is not None
        return self.private / "grpc.sock"  # in the 0700 folder, beside the HTTP API's

    def _command(self, index: int) -> tuple[list[str], socket.socket | None, str, bool]:
        """How front-end ``index`` runs: its command, the socket it accepts HTTP on (None: gRPC only), where it
        forwards to, native."""
        if self._is_native(index):
            assert self.native is not None and self.api is not None
            return [self.native], self.listen if index < self.count else None, self.api.getsockname(), True
        listen = self.api if self.api is not None else self.listen
        return [sys.executable, "-m", "trtop.serve.frontend"], listen, "", False

    async def _settle(self) -> None:
        """On CPU, wait (at most ``SETTLE_S``) for the Python front-ends to finish starting before the model loads:
        the load times the model's ways of running (a lone request over every core or one, rows per second by
        batch size) and keeps what was faster. On two cores a Python front-end's imports took a core while they
        were timed, the session over both cores ran 11.7 ms against one thread's 8.7, and in 2 of 4 servers a lone
        MobileNetV2 request then ran on one thread for the server's life: 9.0-10.4 ms against 5.9-7.2
        (docs/server-measured.md, thirty-seventh session). On a GPU the GPU times the model, and the cores are many."""
        if self.gpu:
            return
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and any(
                not d.heard and not self._is_native(i) and self.processes[i].returncode is None
                for i, d in self.dispatchers.items()):
            await asyncio.sleep(0.02)

    async def _load(self) -> None:
        try:
            await self._settle()
            await self.service.start()
        except Exception as exc:
            log.error("could not load model %r: %s", self.service.name, exc, exc_info=not isinstance(exc, StartupError))
            self.exit_code = EXIT_LOAD_FAILED
            self._broadcast_state()
            self._done.set()
            return
        self._broadcast_state()
        scheduler = self.service.scheduler
        if scheduler is not None:  # descriptors are read when an instance can take them (``read_gate``)
            scheduler.on_full = self.read_gate
            if self.native is not None:  # they hold requests while the engine is full (``Dispatcher.room``)
                scheduler.on_room = self._room
        settle_heap()

    def _broadcast_state(self) -> None:
        for d in self.dispatchers.values():
            d.send_state()

    def _room(self, backlog: int) -> None:
        for d in self.dispatchers.values():
            d.room(backlog)

    def _broadcast_regions(self) -> None:
        for d in self.dispatchers.values():
            d.send_regions()

    async def _start_frontend(self, index: int) -> None:
        # Batches are copied to the GPU from the arena itself, page-locked by the runtime. The mapping must
        # then outlive its front-end: unmapped while registered, a new mapping at the same address would be
        # read through the old registration (stale pages). So every arena is kept for the process's life, and
        # a replacement takes the arena of a front-end gone once the engine has answered all of that one's
        # requests (``_reclaim``): made anew for each, a front-end that died 8 times left 8 arenas' pages and
        # descriptors in the engine process, without bound.
        if self._spare:
            arena = self._spare.pop()
        else:
            arena = Arena.create(self.arena_size, f"trtop-frontend-{index}")
            self.arenas.append(arena)
            self.service.add_host_memory(arena.address, arena.size)
        ours, theirs = socket.socketpair()
        command, listen, proxy_path, native = self._command(index)
        env = dict(os.environ)
        fds = [theirs.fileno(), arena.fd] + ([listen.fileno()] if listen is not None else [])
        grpc_fd, grpc_proxy, grpc_address = 0, "", ""
        busy_go_threads = 0
        if native:
            if self.grpc_listen is not None:
                grpc_fd, grpc_proxy = self.grpc_listen.fileno(), str(self._grpc_path())
                fds.append(grpc_fd)
                if "GOMAXPROCS" not in env:  # a GOMAXPROCS given fixes every front-end's threads
                    busy_go_threads = grpc_go_threads(self.settings.grpc_go_threads, default_threads())
            env.setdefault("GOMAXPROCS", str(NATIVE_GO_THREADS))
        elif self.grpc_listen is not None:  # the Python gRPC server the native ones forward to
            grpc_address = f"unix:{self._grpc_path()}"
        instances = self.service.config.instances
        env.update(setup_env(self.settings, index=index, listen_fd=listen.fileno() if listen is not None else -1,
                             channel_fd=theirs.fileno(),
                             arena_fd=arena.fd, arena_size=arena.size, proxy_path=proxy_path,
                             group_limit=group_limit(instances, self.gpu, self.settings.group_limit),
                             small_group_limit=small_group_limit(instances, self.gpu, self.settings.small_group_limit,
                                                                 self.settings.group_limit),
                             grpc_listen_fd=grpc_fd, grpc_proxy_path=grpc_proxy, grpc_address=grpc_address,
                             busy_go_threads=busy_go_threads))
        proc = await asyncio.create_subprocess_exec(*command, env=env, pass_fds=fds)
        theirs.close()  # the arena's descriptor stays open here: a replacement front-end may get this arena
        dispatcher = Dispatcher(index, self.service, arena, follows_regions=not native)
        dispatcher.small_bound_set = self.settings.small_group_limit > 0
        dispatcher.regions_changed = self._broadcast_regions
        await dispatcher.open(ours, JSON if native else PICKLE)
        dispatcher.send_state()
        self.dispatchers[index] = dispatcher
        self.processes[index] = proc
        task = asyncio.get_running_loop().create_task(self._watch(index, proc, dispatcher))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, index: int, proc: asyncio.subprocess.Process, dispatcher: Dispatcher) -> None:
        started = time.monotonic()
        code = await proc.wait()
        await dispatcher.closed.wait()
        if self.stopping:
            return
        self._reclaim(dispatcher)
        delay = self._respawn_delay.get(index, RESPAWN_DELAY_S)
        if time.monotonic() - started >= RESPAWN_STABLE_S:
            delay = RESPAWN_DELAY_S
        # A front-end that dies young (a crash at start, a bad setting) is restarted ever more slowly, at most
        # every RESPAWN_MAX_DELAY_S, instead of twice a second for ever.
        self._respawn_delay[index] = min(delay * 2, RESPAWN_MAX_DELAY_S)
        log.warning("front-end %d (pid %d) exited with code %s; starting a new one in %.1fs (the others keep "
                    "serving)", index, proc.pid, code, delay)
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._start_frontend(index)

    def _reclaim(self, dispatcher: Dispatcher) -> None:
        """A gone front-end's arena is a replacement's once the engine has answered every request of it (each
        answered request's outputs are written, and its inputs no longer read; each runs or times out)."""
        def spare(_: object = None) -> None:
            self._spare.append(dispatcher.arena)

        if dispatcher.in_flight == 0:
            spare()
            return
        task = asyncio.get_running_loop().create_task(dispatcher.wait_idle())
        task.add_done_callback(spare)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _check_frontends(self) -> None:
        """Replace a front-end whose event loop has not answered a ping for ``--frontend-stuck-s``. Its process
        lives and its sockets stay open, so nothing else notices: its connections and every call the native
        front-ends forward to it would wait forever, and the pod's liveness probe, answered by a native
        front-end, stays green. Its stacks go to the log first (a Python one: SIGUSR2, which faulthandler
        answers from C even while the loop holds the interpreter; a native one: SIGQUIT, Go's own dump)."""
        while not self.stopping:
            await asyncio.sleep(PING_INTERVAL_S)
            for index, dispatcher in list(self.dispatchers.items()):
                proc = self.processes.get(index)
                if proc is None or proc.returncode is not None or not dispatcher.heard or self.stopping:
                    continue
                silent = dispatcher.ping() * PING_INTERVAL_S
                if silent >= self.settings.frontend_stuck_s:
                    await self._replace_stuck(index, proc, silent)

    async def _replace_stuck(self, index: int, proc: asyncio.subprocess.Process, silent: float) -> None:
        if proc.pid in self._stuck:  # being replaced already
            return
        self._stuck.add(proc.pid)
        native = self._is_native(index)
        log.error("front-end %d (pid %d) has not answered the engine for %.0fs: its event loop is stuck; its stacks "
                  "follow, and it is replaced (the others keep serving)", index, proc.pid, silent)
        with contextlib.suppress(ProcessLookupError):  # it may end on its own meanwhile
            proc.send_signal(signal.SIGQUIT if native else signal.SIGUSR2)  # Go: dump and exit; Python: faulthandler
            await asyncio.sleep(STUCK_DUMP_WAIT_S)
            if proc.returncode is None:
                proc.kill()  # _watch starts a new one

    def begin_shutdown(self) -> None:
        if self.stopping:
            if self._done.is_set() and not self._forced.is_set():  # a second signal: stop now
                log.warning("a second stop signal: exiting now, without waiting for what is in flight")
                self._forced.set()
            return
        log.info("stopping: not ready; front-ends drain for %.1fs, then finish what is in flight",
                 self.settings.drain_delay_s)
        self.stopping = True
        self.service.begin_drain()
        self._broadcast_state()
        # Once the front-ends stop accepting (after the drain delay) nobody new can join a batch:
        # run what is queued without waiting for company.
        asyncio.get_running_loop().call_later(self.settings.drain_delay_s, self.service.flush)
        for proc in self.processes.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        self._done.set()

    async def _stop(self) -> None:
        """The front-ends' drain, then the engine's own: bounded by the drain delay, the shutdown timeout and
        ``STOP_GRACE_S``, and cut short by a second signal. A batch stuck in the backend held the engine
        process for ever, a second SIGTERM notwithstanding; now it exits ``EXIT_STOP_FORCED``, and
        ``cli.run_server`` does not wait for the compute threads."""
        budget = self.settings.drain_delay_s + self.settings.shutdown_timeout_s + STOP_GRACE_S
        loop = asyncio.get_running_loop()
        finish = loop.create_task(self._finish())
        forced = loop.create_task(self._forced.wait())
        await asyncio.wait({finish, forced}, timeout=budget, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if finish.done():
            finish.result()
            return
        finish.cancel()
        if not self._forced.is_set():
            log.error("the engine did not finish what was in flight within %.0fs of the stop (a batch stuck in the "
                      "backend?); exiting anyway: %s", budget, self.state_line())
        for p in self.processes.values():
            if p.returncode is None:
                p.kill()
        self.exit_code = EXIT_STOP_FORCED
        self.forced = True

    async def _finish(self) -> None:
        await self._stop_frontends()
        await self.service.close()

    async def _stop_frontends(self) -> None:
        procs = [p for p in self.processes.values() if p.returncode is None]
        if not self.stopping:  # a load failure: nothing to drain
            self.stopping = True
            for p in procs:
                p.send_signal(signal.SIGTERM)
        budget = self.settings.drain_delay_s + self.settings.shutdown_timeout_s
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), budget)
        except TimeoutError:
            log.warning("front-ends did not stop within %.0fs; killing them", budget)
            for p in procs:
                if p.returncode is None:
                    p.kill()
        for d in self.dispatchers.values():
            await d.wait_idle()


def run_supervised(settings: ServeSettings) -> tuple[int, bool]:
    """The engine process: its exit code (0 after a drain, 1 when the model failed to load or the stop was forced)
    and whether the stop was forced (a compute thread may still be stuck: ``cli.run_server`` exits at once)."""
    service, gpu = create_service(settings)

    supervisors: list[Supervisor] = []

    async def main() -> int:
        supervisors.append(Supervisor(settings, service, frontend_count(settings), gpu))
        return await supervisors[0].run()

    try:
        import uvloop

        code = int(uvloop.run(main()))
    except ImportError:
        code = asyncio.run(main())
    return code, bool(supervisors and supervisors[0].forced)
