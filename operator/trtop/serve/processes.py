"""How many processes serve, and of which kind: the engine process's front-ends (Python or the native
``trtop-http``) and the Python ones that serve gRPC beside native ones. Rules from the settings and the
cores this process may use; the one place both the one-process server and the supervisor ask."""
from __future__ import annotations

import shutil

from trtop import names
from trtop.serve.errors import StartupError
from trtop.serve.runtime import default_threads
from trtop.serve.settings import ServeSettings

MAX_AUTO_FRONTENDS = 8
SINGLE_PROCESS_CORES = 2  # at most this many cores: one process serves everything (Python front-ends)
# Native front-ends: each uses every core it is given (Go threads), so a few suffice: one per this many
# cores beyond the engine's, at most MAX_AUTO_NATIVE. (H200 host, 12 cores, ResNet-50 at 64-128 clients:
# 2 of them served 0.85-0.90 x the engine's best where 8 served 0.77-0.81 x; docs/server-measured.md,
# seventh session.)
CORES_PER_NATIVE_FRONTEND = 6
MAX_AUTO_NATIVE = 4

# gRPC-only native front-ends per native front-end, when they serve gRPC: the engine process starts that
# many more trtop-http processes that accept the gRPC port alone (``grpc_only_count``). A native front-end runs
# one Go thread (NATIVE_GO_THREADS; two while its gRPC calls overlap, supervisor.GRPC_GO_THREADS) and Go's HTTP/2
# server spent ~100 us of it per tiny gRPC call, against ~60 us for HTTP/1.1; on the H200 host (12 server cores,
# docs/server-measured.md, twentieth session) the tiny model's gRPC ceiling was 16,821 / 19,304 req/s through 2
# native front-ends and 23,429 / 22,428 through 4, while ResNet-50 over HTTP ran best through 2 (0.85 x at 128
# clients, lone request +0.315 ms) and worse through 4 (0.77 x, +0.385). So HTTP keeps its count and gRPC gets as
# many again; idle, they cost nothing.
GRPC_ONLY_PER_NATIVE = 1


def grpc_only_count(settings: ServeSettings, count: int, native: str | None) -> int:
    """Native front-ends that accept gRPC alone: the setting, else ``GRPC_ONLY_PER_NATIVE`` per native front-end;
    none when native front-ends do not serve gRPC."""
    if not native_grpc(settings, native):
        return 0
    return settings.grpc_only_frontends if settings.grpc_only_frontends >= 0 else GRPC_ONLY_PER_NATIVE * count


def frontend_count(settings: ServeSettings) -> int:
    """Front-end processes: the setting, else one per core beyond the first (the engine's), at most 8,
    and none on two cores or fewer (the engine process then serves HTTP itself: with the client and the
    engine on the same two cores, the hop between processes costs more than a second interpreter gains;
    measured on 2 cores, light model: 1,548 vs 1,150 req/s at 64 connections)."""
    if settings.frontends >= 0:
        return settings.frontends
    cores = default_threads()
    if native_binary(settings) is not None:  # even on two cores: measured faster than one Python process
        return min(MAX_AUTO_NATIVE, max(1, -(-(cores - 1) // CORES_PER_NATIVE_FRONTEND)))
    return python_frontends(cores)


def python_frontends(cores: int) -> int:
    """Python front-ends by default: one per core beyond the engine's, at most 8, none on two cores or
    fewer. Beside native ones they serve gRPC (at least one)."""
    return 0 if cores <= SINGLE_PROCESS_CORES else min(MAX_AUTO_FRONTENDS, cores - 1)


def native_binary(settings: ServeSettings) -> str | None:
    """The native HTTP front-end to run, or None for Python front-ends; StartupError when it is asked
    for by name and missing."""
    if settings.http_frontend == "python":
        return None
    found = shutil.which(names.HTTP_FRONTEND_BINARY)
    if found is None and settings.http_frontend == "native":
        raise StartupError(f"--http-frontend native: {names.HTTP_FRONTEND_BINARY} is not on PATH (build it with "
                           "`make native`, or use --http-frontend python)")
    return found


def native_grpc(settings: ServeSettings, native: str | None) -> bool:
    """Whether the native front-ends serve gRPC too (``--grpc-frontend``); they need to be running."""
    return bool(native and settings.grpc_port and settings.grpc_frontend != "python")


def grpc_frontends(settings: ServeSettings, native: str | None = None) -> int:
    """Python front-ends beside native ones: one when those serve gRPC or there is none (what the native
    ones forward), else as many as without them (they serve gRPC: two in place of eight took the tiny
    model's gRPC rate from ~20,600 to ~9,000 req/s on the H200 host)."""
    if not settings.grpc_port or native_grpc(settings, native):
        return 1
    if settings.frontends >= 0:
        return max(1, settings.frontends)
    return max(1, python_frontends(default_threads()))
