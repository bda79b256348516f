"""A front-end process: HTTP (and gRPC) on its own core, the model in the engine process.

``RemoteModel`` is the handle the routes use, with the same surface as
``InferenceService`` (``name``, ``state``, ``info``, ``infer``...), so ``app`` and the
gRPC service do not know which one they hold. ``infer`` admits the request here (every
check that can refuse it happens before it reaches the engine), places its tensors in
the shared arena, sends a descriptor and waits for the engine's reply; outputs are
copied out of the arena and the regions freed as soon as the reply arrives.

``serve_frontend`` runs the routes (uvicorn, gRPC) in front of that handle; ``main`` is the
process entry point the supervisor starts (``python -m trtop.serve.frontend``): it inherits the listening socket, its arena and its channel as
file descriptors, serves until SIGTERM (drain: not ready, keep serving for the drain
delay, stop accepting, answer what is in flight) and exits when the engine goes away.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import functools
import itertools
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from starlette.applications import Starlette

from trtop.serve import errors
from trtop.serve.app import build_app
from trtop.serve.arena import Allocator, Arena, pad_before
from trtop.serve.channel import Channel, Message
from trtop.serve.errors import BadRequest, InferenceFailed, NotReady, Overloaded, ServeError, TimedOut
from trtop.serve.heap import settle_heap
from trtop.serve.model import Admitted, ModelInfo, admit
from trtop.serve.processes import frontend_count
from trtop.serve.protocol import Held, InferRequest
from trtop.serve.server import InferenceServer, dump_state, grpc_factory, uvicorn_config
from trtop.serve.settings import ServeSettings
from trtop.serve.shared_memory import OFF_MESSAGE, RegionSpec, Registry, check_spec
from trtop.serve.statistics import StatsSnapshot
from trtop.serve.types import Array, Outputs

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.02  # finished requests reach the engine's metrics within this
# Tensors up to this size travel in the descriptor itself, both ways, instead of through the arena: for a tiny
# model the arena's allocations, views and copies cost more than the bytes (in-flight bytes of such requests
# are bounded by the queue and connection limits instead).
INLINE_BYTES = 4096
# How long past a request's own timeout a front-end waits for the engine's answer. The engine answers every
# request, at the latest with TimedOut at its deadline, so one not answered by then and this grace is lost (a
# bug somewhere): its client is told TimedOut instead of waiting forever. The native front-end is given the
# same (``setup_env``'s ``answer_grace_s``).
ANSWER_GRACE_S = 10.0
LOST_CHECK_EVERY = 50  # reports (one second): how often the requests awaiting the engine are checked for lost ones
LOST_DUMP_EVERY_S = 60.0  # a front-end losing answers loses many: the engine is asked for its state at most this often
# The engine pings every front-end every second (``Supervisor._check_frontends``). Once one has come, a front-end
# that hears none for this long says it is not ready: the engine's loop has stopped (a call that never returns,
# SIGSTOP), and requests would wait for their timeout and ANSWER_GRACE_S while the pod stayed in the endpoints.
ENGINE_SILENT_S = 5.0


class LocalCounts:
    """Requests this front-end started and finished since the last report (for the engine's metrics)."""

    def __init__(self) -> None:
        self.started = 0
        self.finished: list[tuple[str, float]] = []

    def request_started(self) -> None:
        self.started += 1

    def request_finished(self, outcome: str, seconds: float) -> None:
        self.finished.append((outcome, seconds))

    def take(self) -> tuple[int, list[tuple[str, float]]]:
        started, finished = self.started, self.finished
        self.started, self.finished = 0, []
        return started, finished


@dataclass
class _Waiting:
    future: asyncio.Future[Any]  # an infer request's outputs, or the answer to a question (``ask``)
    regions: list[int]
    buffer: Held | None = None  # the request body's region, held until the engine's reply
    sent_ns: int = 0  # perf_counter_ns when it was sent
    deadline_ns: int = 0  # perf_counter_ns past which the answer is lost (its timeout and ANSWER_GRACE_S)
    lost: bool = False  # its caller was told TimedOut; its regions stay the engine's until a late answer


class RemoteModel:
    """The model as a front-end sees it: admission here, batching and compute in the engine process."""

    def __init__(self, name: str, arena: Arena, default_timeout_s: float, shared_memory: Registry | None = None) -> None:
        self.name = name
        # Follows the engine process's registry ("regions" messages); registrations go there.
        self.shared_memory = shared_memory if shared_memory is not None else Registry(enabled=False)
        self.state = "loading"
        self.error = ""
        self.info: ModelInfo | None = None
        self.metrics = LocalCounts()
        self._arena = arena
        self._alloc = Allocator(arena.size)
        self._timeout = default_timeout_s
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        self._channel: Channel | None = None
        self._draining = False
        self._row_shapes: dict[str, tuple[tuple[int, ...], int]] = {}
        self.engine_gone = asyncio.Event()
        self.lost = 0  # answers given up on (``expire``)
        self._pinged_at: float | None = None  # time.monotonic() of the engine's last ping (``ENGINE_SILENT_S``)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self._draining and not self.engine_silent()

    def engine_silent(self) -> bool:
        """The engine pinged this front-end before and has not for ``ENGINE_SILENT_S``: its loop has stopped."""
        return self._pinged_at is not None and time.monotonic() - self._pinged_at > ENGINE_SILENT_S

    def attach(self, channel: Channel) -> None:
        self._channel = channel

    # -- messages from the engine ---------------------------------------------------------
    def on_message(self, message: Message) -> None:
        kind = message[0]
        if kind == "done" or kind == "metrics" or kind == "statistics" or kind == "shm":
            waiting = self._waiting.pop(message[1], None)
            if waiting is not None and not waiting.future.done():
                if kind == "done":  # the outputs are taken out of their regions before those are freed below
                    _resolve(waiting.future, message, self._take)
                else:
                    waiting.future.set_result(message)
            if waiting is not None:
                for offset in waiting.regions:
                    self._alloc.free(offset)
                if waiting.buffer is not None:
                    waiting.buffer.release()
                if waiting.lost:
                    log.warning("request %d was answered after its client was told it timed out: its arena regions "
                                "are free again", message[1])
        elif kind == "ping":  # the engine checks that this loop runs (``Supervisor._check_frontends``)
            self._pinged_at = time.monotonic()
            if self._channel is not None:
                self._channel.send(("pong", message[1]))
        elif kind == "regions":  # the engine's registry changed (sent before the answer to a registration)
            self.shared_memory.follow(tuple(RegionSpec(*spec) for spec in message[1]))
        elif kind == "state":
            _, state, error, info = message[:4]
            self.state = "draining" if self._draining and state == "ready" else state
            self.error, self.info = error, info
            if info is not None:  # outputs of a fixed size per row get their arena room before the run
                self._row_shapes = {
                    s.name: (s.shape[1:], math.prod(s.shape[1:]) * np.dtype(s.dtype).itemsize)
                    for s in info.outputs if all(d >= 0 for d in s.shape[1:])}

    def on_engine_gone(self) -> None:
        self.state, self.error = "failed", "the engine process has stopped"
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(NotReady("the engine process has stopped"))
            if waiting.buffer is not None:
                waiting.buffer.release()
        self._waiting.clear()
        self.engine_gone.set()

    # -- the handle ---------------------------------------------------------------------
    def begin_drain(self) -> None:
        self._draining = True
        if self.state in ("ready", "loading"):
            self.state = "draining"

    def flush(self) -> None:
        """Nothing queued here: the engine process runs what is queued when it drains."""

    async def close(self) -> None:
        self.begin_drain()

    async def infer(self, request: InferRequest) -> tuple[Admitted, Outputs]:
        admitted, future = self.infer_started(request)
        return admitted, await future

    def infer_started(self, request: InferRequest) -> tuple[Admitted, asyncio.Future[Outputs]]:
        info = self.info
        if self.state not in ("ready", "draining") or info is None or self._channel is None:
            raise NotReady(f"model {self.name!r} is {self.state}" + (f": {self.error}" if self.error else ""))
        started = time.perf_counter_ns()
        regions: list[int] = []
        buffer = request.buffer  # inputs that are views of it are not copied: it lives until the reply
        if buffer is not None:
            buffer.hold()
        try:
            admitted = admit(info, request)
            timeout = request.timeout_s if request.timeout_s is not None else self._timeout
            inputs = [self._put(name, array, regions) for name, array in admitted.feeds.items()]
            outputs = [(o.name, self._room(info, o.name, admitted.rows, regions)) for o in admitted.outputs]
        except BaseException as exc:  # refused here (admission, no room): a failure in the engine's statistics
            for offset in regions:
                self._alloc.free(offset)
            if buffer is not None:
                buffer.release()
            if isinstance(exc, ServeError):
                self._channel.send(("failed", time.perf_counter_ns() - started))
            raise
        rid = next(self._ids)
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = _Waiting(future, regions, buffer, started,
                                      started + int((timeout + ANSWER_GRACE_S) * 1e9))
        self._channel.send(("infer", rid, admitted.rows, inputs, outputs, timeout))
        return admitted, future

    async def ask(self, kind: str, *args: Any) -> Message:
        """A question for the engine process (``metrics``, ``statistics``, ``shm``) and its answer."""
        if self._channel is None or self._channel.closed:
            raise NotReady("the engine process is not connected")
        rid = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        now = time.perf_counter_ns()
        self._waiting[rid] = _Waiting(future, [], None, now, now + int((self._timeout + ANSWER_GRACE_S) * 1e9))
        self._channel.send((kind, rid, *args))
        return await future

    def expire(self, now_ns: int) -> int:
        """Give up on the answers past their deadline (``_Waiting.deadline_ns``): their callers get TimedOut
        instead of waiting forever, and with them whatever waits on them (a connection's next request, a
        drain). Their regions stay taken until the engine answers after all (it may still read the inputs
        and write the outputs there). Returns how many were given up now."""
        lost = []
        for rid, waiting in self._waiting.items():
            if waiting.lost or now_ns < waiting.deadline_ns:
                continue
            waiting.lost = True
            lost.append(rid)
            if not waiting.future.done():
                waiting.future.set_exception(TimedOut(
                    f"the engine did not answer within its timeout and {ANSWER_GRACE_S:g}s more; the server is "
                    f"overloaded or unwell (its log says more)"))
        if lost:  # one line however many: a server losing answers loses many
            log.warning("%d request(s) had no answer from the engine %gs past their deadline (ids %s): their clients "
                        "get TimedOut; their arena regions stay the engine's until it answers", len(lost),
                        ANSWER_GRACE_S, ", ".join(map(str, lost[:8])) + (", ..." if len(lost) > 8 else ""))
        self.lost += len(lost)
        return len(lost)

    def state_line(self) -> str:
        """What this front-end holds right now, in words (SIGUSR1's dump)."""
        now = time.perf_counter_ns()
        waiting = [w for w in self._waiting.values() if not w.lost]
        oldest = max((now - w.sent_ns for w in waiting), default=None)
        return (f"Python front-end {os.getpid()}: model {self.state}; requests awaiting the engine {len(waiting)}"
                + (f" (the oldest sent {oldest / 1e9:.3f}s ago)" if oldest is not None else "")
                + f"; answers lost {self.lost}, still unanswered {len(self._waiting) - len(waiting)}; "
                f"arena bytes in use {self._alloc.used_bytes}")

    async def register_region(self, spec: RegionSpec) -> None:
        check_spec(spec)
        await self._change_regions("register", (spec.name, spec.key, spec.offset, spec.byte_size))

    async def unregister_region(self, name: str | None) -> None:
        await self._change_regions("unregister", name)

    async def _change_regions(self, op: str, arg: Any) -> None:
        if not self.shared_memory.enabled:
            if op == "unregister":
                return
            raise BadRequest(OFF_MESSAGE)
        _, _, error = await self.ask("shm", op, arg)
        if error is not None:
            raise _rebuild(error)

    async def render_metrics(self) -> tuple[bytes, str]:
        self.report()
        _, _, text, content_type = await self.ask("metrics")
        return text, content_type

    async def statistics_snapshot(self) -> StatsSnapshot:
        _, _, snapshot = await self.ask("statistics")
        assert isinstance(snapshot, StatsSnapshot)
        return snapshot

    def report(self) -> None:
        started, finished = self.metrics.take()
        if (started or finished) and self._channel is not None:
            self._channel.send(("requests", started, finished))

    # -- arena ---------------------------------------------------------------------------
    def body_buffer(self, nbytes: int, lead: int = 0) -> tuple[memoryview, Callable[[], None]] | None:
        """A region of the arena for a request body (``infer_http.BodySink``): its tensors are then sent
        to the engine where the socket's bytes landed, with no copy, starting on a cache line after the
        ``lead`` bytes of its JSON header. None when the arena has no room."""
        pad = pad_before(0, lead)  # regions start on a cache line
        offset = self._alloc.alloc(nbytes + pad)
        if offset is None:
            return None
        return self._arena.bytes_at(offset + pad, nbytes), functools.partial(self._alloc.free, offset)

    def _region(self, nbytes: int, regions: list[int]) -> int:
        offset = self._alloc.alloc(nbytes)
        if offset is None:
            raise Overloaded(f"this server holds {self._alloc.used_bytes} bytes of tensors in flight, its limit "
                             f"(--max-inflight-mb); retry shortly or add replicas")
        regions.append(offset)
        return offset

    def _put(self, name: str, array: Array, regions: list[int]) -> tuple[str, str, tuple[int, ...], int, bytes | None]:
        offset = self._arena.offset_of(array)
        if offset is None:
            if array.nbytes <= INLINE_BYTES:
                return name, array.dtype.str, tuple(array.shape), -1, array.tobytes()
            offset = self._region(array.nbytes, regions)
            np.copyto(self._arena.view(offset, array.dtype, array.shape), array)
        return name, array.dtype.str, tuple(array.shape), offset, None

    def _room(self, info: ModelInfo, name: str, rows: int, regions: list[int]) -> tuple[int, tuple[int, ...]] | None:
        row = self._row_shapes.get(name)
        if row is None or rows * row[1] <= INLINE_BYTES:
            return None  # its size is known only after the run, or it is small: it comes back inline
        row_shape, row_bytes = row
        return self._region(rows * row_bytes, regions), (rows, *row_shape)

    def _take(self, dtype: str, shape: tuple[int, ...], offset: int, inline: bytes | None) -> Array:
        if inline is not None:
            return np.frombuffer(inline, dtype=dtype).reshape(shape)
        return self._arena.view(offset, dtype, shape).copy()  # the region is freed right after


_ERRORS: dict[str, type[ServeError]] = {
    cls.__name__: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, ServeError)
}


def _resolve(future: asyncio.Future[Any], message: Message,
             take: Callable[[str, tuple[int, ...], int, bytes | None], Array]) -> None:
    """An infer reply into its future: the outputs (copied out of the arena now: their regions are freed
    as soon as this returns, and another request may be given them in the same turn of the loop) or
    the engine's error."""
    error, places = message[2], message[3]  # a fifth element, the engine's backlog, is for native front-ends
    if error is not None:
        future.set_exception(_rebuild(error))
        return
    try:
        future.set_result({name: take(dtype, shape, offset, inline) for name, dtype, shape, offset, inline in places})
    except Exception as exc:  # a reply that does not fit its regions: this request fails alone
        future.set_exception(InferenceFailed(f"the engine's answer could not be read: {exc}"))


def _rebuild(error: tuple[str, str, float]) -> ServeError:
    name, message, retry_after = error
    cls = _ERRORS.get(name, errors.InferenceFailed)
    if cls is Overloaded:
        return Overloaded(message, retry_after or 1.0)
    return cls(message)


# -- the process --------------------------------------------------------------------------
ENV_FRONTEND = "TRTOP_FRONTEND_SETUP"  # JSON: settings + inherited descriptors (set by the supervisor)


def setup_env(settings: ServeSettings, *, index: int, listen_fd: int, channel_fd: int, arena_fd: int,
              arena_size: int, proxy_path: str = "", group_limit: int = 0, small_group_limit: int = 0,
              grpc_listen_fd: int = 0,
              grpc_proxy_path: str = "", grpc_address: str = "", busy_go_threads: int = 0) -> dict[str, str]:
    """The setup both kinds of front-end read; ``proxy_path``: the native front-end's way to the Python one,
    ``group_limit``: the descriptors it keeps in flight before it groups requests (``small_group_limit``, when
    > 0, while the first request waiting is small: the engine's state says what is); ``grpc_listen_fd`` and
    ``grpc_proxy_path``: a native front-end's gRPC socket and its way to the Python gRPC server, which
    listens on ``grpc_address`` (not the gRPC port) when set; ``busy_go_threads``: a native front-end's Go threads
    while its gRPC calls overlap (0: as started). Both kinds give up on the engine's answer
    ``ANSWER_GRACE_S`` past its timeout and ask for every process's state at most every ``LOST_DUMP_EVERY_S``."""
    doc = {"settings": {f.name: getattr(settings, f.name) for f in fields(ServeSettings)}, "index": index,
           "listen_fd": listen_fd, "channel_fd": channel_fd, "arena_fd": arena_fd, "arena_size": arena_size,
           "parent_pid": os.getpid(), "proxy_path": proxy_path, "group_limit": group_limit,
           "small_group_limit": small_group_limit,
           "grpc_listen_fd": grpc_listen_fd, "grpc_proxy_path": grpc_proxy_path, "grpc_address": grpc_address,
           "answer_grace_s": ANSWER_GRACE_S, "lost_dump_every_s": LOST_DUMP_EVERY_S, "busy_go_threads": busy_go_threads}
    return {ENV_FRONTEND: json.dumps(doc)}


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the engine process dies (no orphaned front-ends)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def orphaned(parent_pid: int) -> bool:
    """The engine process that started us is gone (it died before PR_SET_PDEATHSIG took hold).

    Compared with the pid the engine process wrote, never with 1: in a container the engine
    process is pid 1 itself, and a front-end whose parent is pid 1 is then a healthy one.
    """
    return os.getppid() != parent_pid


def serve_frontend(settings: ServeSettings, arena: Arena, listen: socket.socket, channel_sock: socket.socket,
                   index: int, grpc_address: str = "") -> int:
    """A front-end process: HTTP (and gRPC) routes on ``listen`` in front of the engine process."""
    model = RemoteModel(settings.model_name, arena, settings.timeout_s,
                        Registry(enabled=settings.shared_memory == "system"))
    holder: list[InferenceServer] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server = holder[0]

        def engine_gone() -> None:
            model.on_engine_gone()
            server.exit_code = 0 if model.state == "draining" or server.should_exit else 1
            server.should_exit = True

        channel = await Channel.open(channel_sock, model.on_message, engine_gone)
        model.attach(channel)
        channel.send(("requests", 0, []))  # nothing to count: it says the signal handlers are set (SIGUSR1's dump)
        reporter = asyncio.get_running_loop().create_task(_report(model))
        yield
        await server.grpc_stopped()  # every RPC in flight answered before the channel closes
        reporter.cancel()
        model.report()
        channel.close()

    app = build_app(model, max_body_bytes=settings.max_body_bytes, lifespan=lifespan,
                    max_inflight_bytes=settings.max_inflight_bytes // max(1, frontend_count(settings)),
                    body_timeout_s=settings.body_timeout_s)
    # Every front-end listens for gRPC on the same port (SO_REUSEPORT; the engine process holds the port).
    server = InferenceServer(uvicorn_config(app, settings, log_config=None), model, settings.drain_delay_s,
                             grpc_factory(model, settings, reuse_port=True, address=grpc_address),
                             settings.shutdown_timeout_s, describe=model.state_line)
    holder.append(server)
    settle_heap()
    server.run(sockets=[listen])
    return server.exit_code


async def _report(model: RemoteModel) -> None:
    """Finished requests to the engine's metrics; now and then, answers given up on (``RemoteModel.expire``)."""
    last_dump = -math.inf
    for tick in itertools.count(1):
        await asyncio.sleep(REPORT_INTERVAL_S)
        model.report()
        if tick % LOST_CHECK_EVERY == 0 and model.expire(time.perf_counter_ns()):
            if time.monotonic() - last_dump >= LOST_DUMP_EVERY_S:
                last_dump = time.monotonic()
                dump_state(model.state_line())
                os.kill(os.getppid(), signal.SIGUSR1)  # the engine logs its state (and native front-ends theirs)


def main() -> int:
    doc = json.loads(os.environ[ENV_FRONTEND])
    settings = ServeSettings(**doc["settings"])
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s frontend-{doc['index']} %(name)s: %(message)s",
                        stream=sys.stderr)
    _die_with_parent()
    if orphaned(doc["parent_pid"]):
        return 1
    # The engine's last word to a stuck front-end before it replaces it: the stacks, written from C (a Python
    # handler would wait for the loop that is stuck).
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    arena = Arena(doc["arena_fd"], doc["arena_size"])
    listen = socket.socket(fileno=doc["listen_fd"])
    channel_sock = socket.socket(fileno=doc["channel_fd"])
    started = time.monotonic()
    code = serve_frontend(settings, arena, listen, channel_sock, doc["index"], doc.get("grpc_address", ""))
    log.debug("front-end %d exits with %d after %.1fs", doc["index"], code, time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
