"""Settings of ``trtop serve``: one typed object from command-line options and ``TRTOP_*`` variables.

Every option has an environment variable (names in ``trtop.names``); a flag beats the
variable, the variable beats the default. The operator sets the engine set, store URI
and model name in the Deployment's env and the batching knobs as flags. Called by ``cli``.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from trtop import names
from trtop.api.spec import (
    DEFAULT_HTTP_FRONTEND, DEFAULT_SLOT_HANDOFF, HTTP_FRONTENDS, KEEP_AWAKE, SHARED_MEMORY, SLOT_HANDOFF,
)


GPU_IO_MODES = ("graphs", "bind", "plain")
GRPC_FRONTENDS = ("auto", "native", "python")
SHARED_MEMORY_MODES = SHARED_MEMORY  # the ModelDeployment's serving.sharedMemory
SLOT_HANDOFF_MODES = SLOT_HANDOFF  # the ModelDeployment's serving.slotHandoff
KEEP_AWAKE_MODES = KEEP_AWAKE  # serve.awake.awake_cores; the ModelDeployment's serving.keepAwake


# Requests with at most this many bytes of tensors take the small requests' bound (``--small-group-limit``;
# ``supervisor.small_group_limit``): the tiny model's (64 bytes) are, ResNet-50's (602 KB) are not ...
SMALL_REQUEST_BYTES = 64 * 1024
# ... when the model's batch-1 run takes less than this (``InferenceService.lone_run_s``), unless the bound was
# set. A model the GPU spends longer on needs the backlog's rule whatever its requests' size: with a backend
# sleeping 3 or 10 ms per batch (small requests, 64 connections, the GPU's rule forced) a bound of 3 cut its
# batches from 20-21 rows to 16 and its throughput by 10% and 23%; sleeping 0.6 ms, the bound served 13% more
# (docs/server-measured.md, twenty-ninth session).
SMALL_MODEL_RUN_S = 0.001


def small_request_bytes(lone_run_s: float | None, bound_set: bool) -> int:
    """What makes a request small for the native front-ends (their state message): ``SMALL_REQUEST_BYTES`` of
    tensors for a model whose batch-1 run is under ``SMALL_MODEL_RUN_S``, or any model when
    ``--small-group-limit`` was set; else 0, no request is (not timed yet, or a longer run)."""
    short = lone_run_s is not None and lone_run_s < SMALL_MODEL_RUN_S
    return SMALL_REQUEST_BYTES if bound_set or short else 0


@dataclass(frozen=True)
class ServeSettings:
    # Name clients use in /v2/models/{name}/... (the ModelDeployment's name).
    model_name: str = "model"
    # What to serve (one of): a raw model file, an engine folder, or engine set + store.
    model_path: str = ""
    engine_dir: str = ""
    engine_set: str = ""  # JSON list of {key, target, backend, artifact} or of engine keys
    store_uri: str = ""
    # auto (from the engine / file), onnxruntime, tensorrt, tensorflow, or module:attribute.
    backend: str = "auto"
    host: str = "0.0.0.0"
    port: int = 8000
    # The KServe v2 / Triton gRPC protocol's port (Triton's default); 0 = no gRPC.
    grpc_port: int = names.SERVE_GRPC_PORT
    # A gRPC connection older than this is asked to go (GOAWAY; its calls in flight finish) and its client
    # connects again: long-lived HTTP/2 connections otherwise stay where they first landed, on one front-end
    # (SO_REUSEPORT hashes connections, not calls) and on one pod (a Service balances connections), so new
    # replicas and idle front-ends get none of their calls. gRPC adds +-10% jitter. 0 = never.
    grpc_max_connection_age_s: float = 30.0
    # Rows per batch; 0 = the engine's batch.max (32 for a raw model without a fixed batch).
    max_batch: int = 0
    # How long a freed instance may wait for a fuller batch (only for requests that arrived while every
    # instance was busy; a request that finds an instance free always runs at once).
    max_queue_delay_ms: float = 0.0
    # Batch sizes that run (batches are padded up to one): "auto" = the engine's own, else powers of two
    # up to the max batch; a comma list ("1,4,16,32"); "all" = every size (no padding, no warm-up per size).
    buckets: str = "auto"
    # Requests waiting beyond this are refused with 503 + Retry-After.
    max_queue_size: int = 256
    # Per-request deadline (queue + compute) unless the request sets parameters.timeout.
    timeout_s: float = 30.0
    # Largest request body accepted (413 above it); also the largest gRPC request message.
    max_body_mb: float = 64.0
    # Tensor bytes all requests in flight may hold (inputs + outputs); above it 503 + Retry-After.
    max_inflight_mb: float = 256.0
    # A request body must arrive within this (slow senders would hold memory and connections).
    body_timeout_s: float = 30.0
    # Open client connections at most (HTTP; beyond it new connections get 503) and gRPC calls in flight
    # (beyond it RESOURCE_EXHAUSTED), in each process that serves them.
    max_connections: int = 1024
    # Front-end processes that parse HTTP/gRPC in front of the one engine process; -1 = one per core
    # beyond the engine's (at most 8); 0 = one process does everything.
    frontends: int = -1
    # What the front-end processes answer HTTP with: "native" = trtop-http (Go: the infer hot path and
    # health probes, everything else forwarded to a Python front-end), "python" = uvicorn in each, "auto" =
    # native when the trtop-http binary is on PATH (the server images carry it), the default (why:
    # spec.DEFAULT_HTTP_FRONTEND).
    http_frontend: str = DEFAULT_HTTP_FRONTEND
    # Who answers gRPC beside native HTTP front-ends: "native" = the same trtop-http processes (ModelInfer
    # with raw tensors and the health calls; every other call forwarded to one Python gRPC server), "python"
    # = Python front-ends on the gRPC port, "auto" = native whenever the HTTP front-ends are native. Without
    # native HTTP front-ends gRPC is Python's. On the H200 host Python's grpc front-ends spent ~0.37 ms of a
    # core per tiny request, HTTP's 0.14 (docs/server-measured.md).
    grpc_frontend: str = "auto"
    # Native front-ends that accept gRPC alone, beside those that accept HTTP and gRPC; -1 = as many as those
    # (``processes.grpc_only_count``).
    grpc_only_frontends: int = -1
    # Go threads of each native front-end that serves gRPC while its gRPC calls overlap (one while they come one at
    # a time: a client's channel carries all its calls on one connection, which stays on one front-end); 0 =
    # ``supervisor.grpc_go_threads``: 2 on more than two cores, else 1; 1 = one always. A GOMAXPROCS in the
    # server's environment fixes them.
    grpc_go_threads: int = 0
    # Descriptors a native front-end keeps in flight at the engine before it holds requests back to send
    # them as one group (``supervisor.group_limit``); 0 = by the device: instances + 1 on CPU, 64 on a GPU.
    group_limit: int = 0
    # The same bound for small requests (``small_request_bytes``; ``supervisor.small_group_limit``), 0 = by the
    # device: instances + 1 on a GPU unless ``group_limit`` is set, else as ``group_limit``. Small requests of a
    # short model cost the engine's Python per descriptor, not the GPU, so they gain from fewer descriptors
    # where large ones, or a longer model's, need the backlog alone.
    small_group_limit: int = 0
    # Batches that may run at once (Triton's instance count); 0 = 1 on a GPU, min(cores, 4) on CPU.
    instances: int = 0
    # Compute threads per batch for CPU backends; 0 = the cores this process may use / instances.
    threads: int = 0
    # How a GPU backend feeds a batch: "graphs" = inputs and outputs bound to fixed GPU buffers per batch
    # size, replayed as a CUDA graph (falls back to "bind" where capture fails), "bind" = bound buffers
    # without graphs, "plain" = the library's own copies each run.
    gpu_io: str = "graphs"
    # Keep the server's cores from halting while requests come (``serve.awake``): "auto" = without a CPU limit
    # and on at most 16 cores, on a GPU or for a CPU model whose lone run is under 1 ms; "on"; "off". Costs
    # CPU time while traffic flows; saves the wake-ups of halted cores on a lone request's path (0.2-0.3 ms
    # of ResNet-50's on the H200 host).
    keep_awake: str = "auto"
    # While the cores are kept awake (on 4 or more), the engine's event loop polls for this long after each request
    # instead of sleeping (``awake.KeepAwake.poll_s``): the next descriptor finds it running, with its caches warm.
    # It costs one core while requests come. 0 = never.
    loop_poll_ms: float = 2.0
    # On a GPU with bound sessions (``onnxruntime_bind``): "on" = the event loop hands the GIL to a slot's thread at
    # each batch (waits, at most 1 ms, for it to reach its copies; the copies are queued holding the GIL; the next
    # batch starts where one lands; a thread waiting for the GIL asks for it after 0.2 ms instead of 5). A slot
    # otherwise waits for a busy loop at each of those points: 1.0-1.6 ms between batches of ~6 ms on an H100 at
    # 64 clients, 5-9% more served with the four together (trials, thirty-eighth session). "on" (default): on two
    # H100s it served 3-7% more at 16 to 128 clients and the same at 1 to 8 (a lone request, paired: +0.18 to +0.31
    # ms against +0.25); no effect on CPU (thirty-ninth session). "off": the loop never waits for a slot's thread.
    slot_handoff: str = DEFAULT_SLOT_HANDOFF
    # Triton's system shared memory extension (``serve.shared_memory``): "system" = clients on this host (a
    # sidecar in the pod) register /dev/shm regions and requests name them instead of carrying tensor bytes;
    # "off" (default): refused. Such a client can make the server read and write its regions, so only
    # processes trusted like the server itself should reach a server with it on.
    shared_memory: str = "off"
    # A front-end process whose event loop has not answered the engine's ping for this long is stuck: its
    # stacks go to the log and it is replaced (the others keep serving). 0 = never checked.
    frontend_stuck_s: float = 30.0
    # After SIGTERM: report not ready but keep serving this long (endpoints need time to drop the
    # pod), then stop accepting and finish what is in flight.
    drain_delay_s: float = 0.0
    # Longest graceful drain before in-flight requests are cancelled (below the pod's grace period).
    shutdown_timeout_s: float = 50.0
    # Where engines fetched from the store are kept (the pod's /tmp emptyDir).
    cache_dir: str = "/tmp/trtop-engines"
    # Device override ("cpu", "8.9/NVIDIA-L4"); empty = ask NVML.
    device: str = ""
    log_level: str = "info"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 1024 * 1024)

    @property
    def bucket_sizes(self) -> tuple[int, ...] | None:
        """None: auto; (): every size; else the listed sizes."""
        text = self.buckets.strip().lower()
        if text in ("", "auto"):
            return None
        if text == "all":
            return ()
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))


# field -> (flag, environment variable, help)
_OPTIONS: dict[str, tuple[str, str, str]] = {
    "model_name": ("--model-name", names.ENV_MODEL_NAME, "model name in the v2 URLs"),
    "model_path": ("--model", names.ENV_SERVE_MODEL_PATH, "a raw model: .onnx file, SavedModel folder or .plan"),
    "engine_dir": ("--engine-dir", names.ENV_SERVE_ENGINE_DIR, "an engine folder (engine.json + artifact)"),
    "engine_set": ("--engine-set", names.ENV_ENGINE_SET, "JSON engine set (the operator sets the variable)"),
    "store_uri": ("--store-uri", names.ENV_STORE_URI, "engine store URI (file path, file:// or s3://)"),
    "backend": ("--backend", names.ENV_SERVE_BACKEND, "auto|onnxruntime|tensorrt|tensorflow|module:attr"),
    "host": ("--host", names.ENV_SERVE_HOST, "address to listen on"),
    "port": ("--port", names.ENV_SERVE_PORT, "port to listen on"),
    "grpc_port": ("--grpc-port", names.ENV_SERVE_GRPC_PORT, "gRPC port (0: no gRPC)"),
    "grpc_max_connection_age_s": ("--grpc-max-connection-age-s", names.ENV_SERVE_GRPC_MAX_CONNECTION_AGE_S,
                                  "seconds before a gRPC client is asked to reconnect (spreads load; 0: never)"),
    "max_batch": ("--max-batch", names.ENV_SERVE_MAX_BATCH, "rows per batch (0: the engine's max)"),
    "max_queue_delay_ms": ("--max-queue-delay-ms", names.ENV_SERVE_MAX_QUEUE_DELAY_MS,
                           "how long a request may wait for a batch to fill"),
    "buckets": ("--buckets", names.ENV_SERVE_BUCKETS, "batch sizes that run: auto, all or a comma list"),
    "max_queue_size": ("--max-queue-size", names.ENV_SERVE_MAX_QUEUE_SIZE, "queued requests before 503"),
    "timeout_s": ("--timeout-s", names.ENV_SERVE_TIMEOUT_S, "per-request deadline in seconds"),
    "max_body_mb": ("--max-body-mb", names.ENV_SERVE_MAX_BODY_MB, "largest request body (and gRPC message) in MiB"),
    "max_inflight_mb": ("--max-inflight-mb", names.ENV_SERVE_MAX_INFLIGHT_MB,
                        "tensor MiB in flight before 503 (inputs + outputs of every request)"),
    "body_timeout_s": ("--body-timeout-s", names.ENV_SERVE_BODY_TIMEOUT_S, "seconds a request body may take to arrive"),
    "max_connections": ("--max-connections", names.ENV_SERVE_MAX_CONNECTIONS,
                        "open client connections at most (and gRPC calls in flight)"),
    "frontends": ("--frontends", names.ENV_SERVE_FRONTENDS,
                  "front-end processes (-1: by the cores: Python one per core beyond the engine's, at most 8, none on "
                  "<= 2 cores; native one per 6 cores, 1 to 4; 0: single process)"),
    "http_frontend": ("--http-frontend", names.ENV_SERVE_HTTP_FRONTEND,
                      "front-ends' HTTP: python, native (trtop-http), or auto (default: native when installed)"),
    "grpc_frontend": ("--grpc-frontend", names.ENV_SERVE_GRPC_FRONTEND,
                      "gRPC beside native HTTP front-ends: auto (default: native with them), native, or python"),
    "grpc_only_frontends": ("--grpc-only-frontends", names.ENV_SERVE_GRPC_ONLY_FRONTENDS,
                            "native front-ends that accept gRPC alone (-1: one per native front-end)"),
    "grpc_go_threads": ("--grpc-go-threads", names.ENV_SERVE_GRPC_GO_THREADS,
                        "Go threads of a native front-end while its gRPC calls overlap (0: 2 on more than two "
                        "cores, else 1; 1: one always)"),
    "group_limit": ("--group-limit", names.ENV_SERVE_GROUP_LIMIT,
                    "descriptors a native front-end keeps at the engine before it groups requests (0: instances + 1 "
                    "on CPU, 64 on a GPU)"),
    "small_group_limit": ("--small-group-limit", names.ENV_SERVE_SMALL_GROUP_LIMIT,
                          f"the same for requests of at most {SMALL_REQUEST_BYTES // 1024} KiB of tensors "
                          "(0: instances + 1 on a GPU for a model whose batch-1 run takes under "
                          f"{SMALL_MODEL_RUN_S * 1000:g} ms, unless --group-limit is set; else as --group-limit)"),
    "instances": ("--instances", names.ENV_SERVE_INSTANCES, "batches that may run at once (0: 1 on GPU, min(cores, 4) on CPU)"),
    "threads": ("--threads", names.ENV_SERVE_THREADS, "compute threads per batch (0: cores / instances)"),
    "gpu_io": ("--gpu-io", names.ENV_SERVE_GPU_IO,
               "GPU batches: graphs (bound buffers + CUDA graph per batch size), bind, or plain"),
    "keep_awake": ("--keep-awake", names.ENV_SERVE_KEEP_AWAKE,
                   "keep cores from halting while requests come: auto (only cores that are the pod's own: pinned to "
                   "no more than its CPU limit, <= 16; a GPU, or a batch-1 run under 1 ms on CPU), on (every core "
                   "taken as its own), off"),
    "loop_poll_ms": ("--loop-poll-ms", names.ENV_SERVE_LOOP_POLL_MS,
                     "while the cores are kept awake (4 or more), ms the engine's event loop polls after each request "
                     "instead of sleeping (0: never)"),
    "slot_handoff": ("--slot-handoff", names.ENV_SERVE_SLOT_HANDOFF,
                     "GPU slots: on (default; the event loop hands the GIL to a slot's thread at each batch) or off"),
    "shared_memory": ("--shared-memory", names.ENV_SERVE_SHARED_MEMORY,
                      "system shared memory extension: off (default) or system (clients on this host name /dev/shm "
                      "regions instead of sending tensors)"),
    "frontend_stuck_s": ("--frontend-stuck-s", names.ENV_SERVE_FRONTEND_STUCK_S,
                         "seconds a front-end's event loop may leave the engine's ping unanswered before it is "
                         "replaced (0: never)"),
    "drain_delay_s": ("--drain-delay-s", names.ENV_SERVE_DRAIN_DELAY_S,
                      "after SIGTERM, seconds to keep serving while not ready"),
    "shutdown_timeout_s": ("--shutdown-timeout-s", names.ENV_SERVE_SHUTDOWN_TIMEOUT_S,
                           "longest graceful drain in seconds"),
    "cache_dir": ("--cache-dir", names.ENV_SERVE_CACHE_DIR, "where fetched engines are kept"),
    "device": ("--device", names.ENV_SERVE_DEVICE, "device override: cpu or CC[/PRODUCT] (default: NVML)"),
    "log_level": ("--log-level", names.ENV_SERVE_LOG_LEVEL, "debug|info|warning|error"),
}


def parse_settings(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServeSettings:
    """Settings from flags over ``TRTOP_*`` variables over defaults; exits with usage on bad input."""
    environ = os.environ if env is None else env
    defaults = ServeSettings()
    parser = argparse.ArgumentParser(prog="trtop serve", description="Serve a model over the Open Inference Protocol v2.")
    for f in fields(ServeSettings):
        flag, var, help_ = _OPTIONS[f.name]
        default: Any = getattr(defaults, f.name)
        kind = type(default)
        raw = environ.get(var)
        if raw not in (None, ""):
            try:
                default = kind(raw)
            except ValueError:
                parser.error(f"{var}={raw!r} is not a valid {kind.__name__}")
        parser.add_argument(flag, dest=f.name, type=kind, default=default, help=f"{help_} (env {var})")
    ns = parser.parse_args(list(argv))
    settings = ServeSettings(**vars(ns))
    problems = _problems(settings)
    if problems:
        parser.error("; ".join(problems))
    return settings


def _problems(s: ServeSettings) -> list[str]:
    out = []
    sources = [n for n, v in (("--model", s.model_path), ("--engine-dir", s.engine_dir)) if v]
    if len(sources) > 1:
        out.append("give only one of --model and --engine-dir")
    if s.max_batch < 0:
        out.append("--max-batch must be >= 0")
    try:
        sizes = s.bucket_sizes
    except ValueError:
        out.append(f"--buckets {s.buckets!r} is not auto, all or a comma list of batch sizes")
    else:
        if sizes and sizes[0] < 1:
            out.append("--buckets sizes must be >= 1")
    if s.max_queue_delay_ms < 0:
        out.append("--max-queue-delay-ms must be >= 0")
    if s.frontend_stuck_s < 0:
        out.append("--frontend-stuck-s must be >= 0 (0: never)")
    if s.group_limit < 0:
        out.append("--group-limit must be >= 0 (0: by the device)")
    if s.small_group_limit < 0:
        out.append("--small-group-limit must be >= 0 (0: as --group-limit)")
    if s.instances < 0:
        out.append("--instances must be >= 0")
    if s.http_frontend not in HTTP_FRONTENDS:
        out.append(f"--http-frontend must be one of {', '.join(HTTP_FRONTENDS)}")
    if s.grpc_frontend not in GRPC_FRONTENDS:
        out.append(f"--grpc-frontend must be one of {', '.join(GRPC_FRONTENDS)}")
    elif s.grpc_frontend == "native" and s.http_frontend == "python":
        out.append("--grpc-frontend native runs in the native HTTP front-ends: add --http-frontend native")
    if s.keep_awake not in KEEP_AWAKE_MODES:
        out.append(f"--keep-awake must be one of {', '.join(KEEP_AWAKE_MODES)}")
    if not 0 <= s.loop_poll_ms <= 1000:
        out.append("--loop-poll-ms must be between 0 (never) and 1000")
    if s.slot_handoff not in SLOT_HANDOFF_MODES:
        out.append(f"--slot-handoff must be one of {', '.join(SLOT_HANDOFF_MODES)}")
    if s.shared_memory not in SHARED_MEMORY_MODES:
        out.append(f"--shared-memory must be one of {', '.join(SHARED_MEMORY_MODES)}")
    if s.gpu_io not in GPU_IO_MODES:
        out.append(f"--gpu-io must be one of {', '.join(GPU_IO_MODES)}")
    if s.max_queue_size < 1:
        out.append("--max-queue-size must be >= 1")
    if s.timeout_s <= 0:
        out.append("--timeout-s must be > 0")
    if s.max_body_mb <= 0:
        out.append("--max-body-mb must be > 0")
    if s.max_inflight_mb < s.max_body_mb:
        out.append("--max-inflight-mb must be at least --max-body-mb")
    if s.body_timeout_s <= 0:
        out.append("--body-timeout-s must be > 0")
    if s.max_connections < 1:
        out.append("--max-connections must be >= 1")
    if s.grpc_max_connection_age_s < 0:
        out.append("--grpc-max-connection-age-s must be >= 0 (0: never)")
    if s.frontends < -1:
        out.append("--frontends must be -1 (auto), 0 or more")
    if s.grpc_only_frontends < -1:
        out.append("--grpc-only-frontends must be -1 (auto), 0 or more")
    if s.grpc_go_threads < 0:
        out.append("--grpc-go-threads must be 0 (the default) or more")
    if not 0 < s.port < 65536:
        out.append("--port must be 1-65535")
    if not 0 <= s.grpc_port < 65536:
        out.append("--grpc-port must be 0 (off) or 1-65535")
    elif s.grpc_port == s.port:
        out.append(f"--grpc-port and --port are both {s.port}; give gRPC its own port (or 0 for none)")
    return out
