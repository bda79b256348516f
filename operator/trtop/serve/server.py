"""The server process: pick the engine, listen, load in the background, drain on SIGTERM.

Start-up: read the device and choose the engine before listening (a pod with no usable
engine exits at once, code 2, with the reason); then listen at once so liveness holds
while the model is fetched, loaded and warmed up; readiness turns true only after that.
A load failure exits with code 1. The gRPC protocol (``--grpc-port``) listens beside HTTP
on the same event loop, started once HTTP is up; failing to bind it also exits with 1.

SIGTERM (a rolling update or scale-down): readiness turns false at once; the server
keeps serving for ``drain_delay_s`` (endpoints take a moment to drop the pod), then
stops accepting connections (HTTP and gRPC), runs everything queued without waiting for
batches to fill, answers every in-flight request of both and exits 0. A second SIGINT forces the exit.
Called by ``cli``.
"""
from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import importlib.util
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from trtop.serve.app import build_app
from trtop.serve.awake import KeepAwake, awake_cores, lone_run_max_s, poll_seconds
from trtop.serve.device import detect_device
from trtop.serve.errors import StartupError
from trtop.serve.heap import settle_heap
from trtop.serve.infer_http import FastInfer
from trtop.serve.metrics import ServerMetrics
from trtop.serve.runtime import (
    RuntimeOptions, cgroup_cpu_quota, cpu_affinity, default_threads, load_runtime, parallelism,
)
from trtop.serve.handle import ModelHandle
from trtop.serve.service import BatchingConfig, InferenceService, Loaded
from trtop.serve.settings import ServeSettings
from trtop.serve.shared_memory import Registry
from trtop.serve.source import Servable, fetch_servable, resolve_servable

log = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 1
EXIT_CANNOT_LISTEN = 1
EXIT_STOP_FORCED = 1  # the drain did not finish in time (a batch stuck in the backend) or a second signal came
STOP_GRACE_S = 2.0  # after the drain's budget, what the engine has to finish before it exits anyway


def dump_state(line: str) -> None:
    """A process's state line and every thread's stack to the log (SIGUSR1; docs/server.md, Life cycle). The
    stacks leave in one write, named by the process: every process of a pod dumps at once, and faulthandler's
    own writes (a few words each) would mix with the others'."""
    log.warning("state: %s", line)
    with tempfile.TemporaryFile() as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        stacks = f.read()
    pid = os.getpid()
    text = b"=== stacks of process %d\n%s=== end of the stacks of process %d\n" % (pid, stacks, pid)
    try:
        os.write(sys.stderr.fileno(), text)
    except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (captured)
        sys.stderr.write(text.decode(errors="replace"))


class InferenceServer(uvicorn.Server):
    """uvicorn's server with a readiness-first drain and our own exit code. ``describe``: this process's state
    line for SIGUSR1's dump."""

    def __init__(self, config: uvicorn.Config, service: ModelHandle, drain_delay_s: float,
                 grpc_server: Callable[[], Any] | None = None, grace_s: float = 30.0,
                 describe: Callable[[], str] | None = None) -> None:
        super().__init__(config)
        self.service = service
        self.describe = describe or (lambda: f"Python front-end {os.getpid()}")
        self.drain_delay_s = drain_delay_s
        self.exit_code = 0
        self._stop_at: float | None = None
        self._build_grpc = grpc_server  # -> grpc.aio.Server (bound, not started)
        self._grace_s = grace_s
        self._grpc: Any = None
        self._grpc_stop: asyncio.Task[None] | None = None
        self.forced = False  # the stop did not finish (``cli.run_server`` then exits without waiting for threads)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._build_grpc is None or self.should_exit:
            return
        try:
            self._grpc = self._build_grpc()
            await self._grpc.start()
        except Exception as exc:  # grpc raises RuntimeError when the port cannot be bound
            log.error("cannot serve gRPC: %s (is the port in use? --grpc-port 0 turns gRPC off)", exc)
            self._grpc = None
            self.exit_code = EXIT_CANNOT_LISTEN
            self.should_exit = True

    def _stop_grpc(self) -> None:
        """gRPC takes no new RPCs from now on; those in flight have up to the shutdown timeout."""
        if self._grpc is not None and self._grpc_stop is None:
            self._grpc_stop = asyncio.get_running_loop().create_task(self._grpc.stop(self._grace_s))

    async def grpc_stopped(self) -> None:
        """Stop gRPC (if not yet) and wait until every in-flight RPC is answered."""
        self._stop_grpc()
        if self._grpc_stop is not None:
            await self._grpc_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.begin_drain()
        if self._stop_at is None and self.drain_delay_s > 0 and not self.should_exit:
            log.info("signal %d: not ready; serving %.1fs more before draining", sig, self.drain_delay_s)
            self._stop_at = time.monotonic() + self.drain_delay_s
            return
        if self.should_exit:  # a second signal: stop now (uvicorn skips the engine's close; ``until_closed`` stops)
            if not self.force_exit:
                log.warning("a second stop signal: exiting now, without waiting for what is in flight")
            self.force_exit = self.forced = True
            self.exit_code = EXIT_STOP_FORCED
        else:
            self.should_exit = True

    async def until_closed(self, closing: Any, budget_s: float) -> None:
        """Await ``closing`` (the engine's close: what is queued and running), at most ``budget_s`` or until a
        second signal. A batch stuck in the backend held the process for ever, a second SIGTERM
        notwithstanding; then the exit code is ``EXIT_STOP_FORCED`` and ``forced`` says not to wait for threads."""
        task = asyncio.ensure_future(closing)
        deadline = time.monotonic() + budget_s
        while not task.done() and not self.force_exit and time.monotonic() < deadline:
            await asyncio.wait({task}, timeout=0.1)
        if task.done():
            task.result()
            return
        task.cancel()
        if not self.force_exit:
            log.error("the engine did not finish what was in flight within %.0fs (a batch stuck in the backend?); "
                      "exiting anyway: %s", budget_s, self.describe())
        self.exit_code = EXIT_STOP_FORCED
        self.forced = True

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.flush()  # nobody new can join a batch: run what is queued now
        self._stop_grpc()  # gRPC drains beside HTTP's connections
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a caught SIGTERM after its graceful shutdown (so the process dies by the
        # signal); a drained server should exit with its own code instead, so we own the handlers.
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self.handle_exit) for s in sigs}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda sig, frame: dump_state(self.describe()))
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def build_loader(servable: Servable, settings: ServeSettings, threads: int, gpu: bool, slots: int = 1) -> Loaded:
    """Fetch (when from the store) and load the model; runs in the loader thread."""
    path, record = fetch_servable(servable, Path(settings.cache_dir))
    options = RuntimeOptions(threads=threads, use_gpu=gpu, cuda_graphs=settings.gpu_io == "graphs",
                             io_binding=settings.gpu_io != "plain", slots=slots,
                             handoff=settings.slot_handoff == "on")
    runtime = load_runtime(servable.backend, path, options)
    return Loaded(runtime, record, servable.backend, servable.key, str(servable.target or ""))


def create_service(settings: ServeSettings) -> tuple[InferenceService, bool]:
    """The model service (not loaded yet) for this device; (service, on a GPU)."""
    device = detect_device(settings.device)
    servable = resolve_servable(settings, device)
    instances, threads = parallelism(settings.instances, settings.threads, backend=servable.backend,
                                     gpu=not device.is_cpu, cores=default_threads())
    log.info("serving %r: %s on %s with the %s backend (%d batch(es) at once, %d thread(s) each)",
             settings.model_name, servable.origin, device, servable.backend, instances, threads)
    metrics = ServerMetrics(settings.model_name)
    cores, quota = cpu_affinity(), cgroup_cpu_quota()
    awake = awake_cores(settings.keep_awake, cores=cores, cpu_quota=quota)
    if settings.keep_awake == "auto" and not awake:
        log.info("cores not kept awake: %d core(s) and %s; auto spins only on cores that are the pod's own (pinned "
                 "to no more than its CPU limit), since other cgroups' tasks would share them (--keep-awake on "
                 "would)", len(cores), f"a CPU limit of {quota:g}" if quota else "no CPU limit")
    under_s = lone_run_max_s(settings.keep_awake, gpu=not device.is_cpu)
    service = InferenceService(
        settings.model_name, lambda: build_loader(servable, settings, threads, not device.is_cpu, instances),
        BatchingConfig(settings.max_batch, settings.max_queue_delay_ms / 1000, settings.max_queue_size,
                       settings.timeout_s, instances, settings.bucket_sizes),
        metrics, KeepAwake(awake, report=metrics.cores_awake, lone_run_max_s=under_s,
                           poll_s=poll_seconds(settings.loop_poll_ms, awake)) if awake else None,
        Registry(enabled=settings.shared_memory == "system"),
    )
    return service, not device.is_cpu


def create_server(settings: ServeSettings) -> InferenceServer:
    """The single-process server: device, engine choice, service, app, uvicorn config."""
    service, _ = create_service(settings)
    holder: list[InferenceServer] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(_load(service, holder[0]))
        yield
        if not task.done():
            task.cancel()
        await holder[0].until_closed(_close(), settings.shutdown_timeout_s + STOP_GRACE_S)

    async def _close() -> None:
        await holder[0].grpc_stopped()  # in-flight RPCs are answered before the scheduler stops
        await service.close()

    app = build_app(service, max_body_bytes=settings.max_body_bytes, lifespan=lifespan,
                    max_inflight_bytes=settings.max_inflight_bytes, body_timeout_s=settings.body_timeout_s)
    server = InferenceServer(uvicorn_config(app, settings), service, settings.drain_delay_s,
                             grpc_factory(service, settings, reuse_port=False), settings.shutdown_timeout_s,
                             describe=service.state_line)
    holder.append(server)
    return server


def grpc_factory(handle: ModelHandle, settings: ServeSettings, *, reuse_port: bool,
                 address: str = "") -> Callable[[], Any] | None:
    """What builds the gRPC server (grpc.aio needs the running loop), or None when gRPC is off; ``address``:
    where it listens in place of the gRPC port (``unix:path`` behind native front-ends)."""
    if not settings.grpc_port:
        return None

    def build() -> Any:
        from trtop.serve.grpc import build_grpc_server  # grpcio is loaded only when gRPC is on

        return build_grpc_server(handle, host=settings.host, port=settings.grpc_port, address=address,
                                 max_message_bytes=settings.max_body_bytes, reuse_port=reuse_port,
                                 max_concurrent_rpcs=settings.max_connections,
                                 max_connection_age_s=settings.grpc_max_connection_age_s,
                                 grace_s=settings.timeout_s)

    return build


def uvicorn_config(app: Starlette, settings: ServeSettings, **extra: Any) -> uvicorn.Config:
    http: Any = "h11"
    if importlib.util.find_spec("httptools"):
        # infer bodies land in a buffer of their size (a front-end's shared memory), see http_protocol
        from trtop.serve.http_protocol import protocol_for

        http = protocol_for(app) if isinstance(app, FastInfer) else "httptools"
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", access_log=False,
        log_level=settings.log_level.lower(),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=http,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) or None,
        # Clients keep connections open between requests; keep-alive longer than typical LB idle timeouts
        # would hold sockets for nothing, shorter makes clients reconnect under light load.
        timeout_keep_alive=30,
        backlog=settings.max_connections,
        proxy_headers=False,  # nothing here reads the client address; the middleware costs ~2% per request
        limit_concurrency=settings.max_connections,
        **extra,
    )


async def _load(service: InferenceService, server: InferenceServer) -> None:
    try:
        await service.start()
    except Exception as exc:
        log.error("could not load model %r: %s", service.name, exc, exc_info=not isinstance(exc, StartupError))
        server.exit_code = EXIT_LOAD_FAILED
        server.should_exit = True
        return
    settle_heap()
