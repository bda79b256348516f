"""A GPU's batching on a machine without one: ``trtop serve`` with a backend that sleeps as long as a GPU run.

    .venv/bin/python bench/gpu_like.py --config i1=--instances=1 --config i2=--instances=2 --rounds 2

Serves ``models.fat`` (ResNet-50's tensors: 3x224x224 in, 1,000 floats out) through native front-ends with a
GPU's rules forced (``--frontends 4 --group-limit 64``), and the backend ``GpuLike``: a batch of ``rows`` takes
``--base-ms + rows * --row-ms`` asleep (the GIL released, as a thread waiting on a CUDA stream; the instances'
sleeps take turns, as batches do on one GPU) and answers zeros. What it measures is the server's part under a
GPU's load on few cores: how requests group, queue and batch, and the tail that follows; the model's own time is
the sleep's, so no figure here is the GPU's. Each configuration gets a fresh server per round, the configurations
alternating (``--config`` as ``bench/configs.py`` reads it); ``loadclient.py`` drives it. Prints one line per run:
requests a second, p50, p99, p99/p50, the mean batch from the server's metrics and the share of short batches
(``serve_gpu.SHORT_BATCH_ROWS``).

A bench, not a test: ``trtop-http`` must be on ``PATH`` or in ``.work/native`` (``make native``).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from configs import parse_config, server_env
from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
from trtop.serve.types import Feeds, Outputs

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BASE_MS_ENV = "GPU_LIKE_BASE_MS"
ROW_MS_ENV = "GPU_LIKE_ROW_MS"
# a GPU's rules where this machine's cores would choose a CPU's; the instance count is each configuration's
GPU_RULES = ["--http-frontend", "native", "--frontends", "4", "--group-limit", "64", "--max-queue-size", "4096"]


def sleep_s(rows: int, base_ms: float, row_ms: float) -> float:
    """A GPU-like run's length: a fixed cost (launches, the copies' latency) and a cost per row."""
    return (base_ms + rows * row_ms) / 1e3


class GpuLike(OnnxRuntime):
    """ONNX Runtime's tensor specs and load path; runs that sleep instead of computing (see the module's doc).
    The sleeps of several instances take turns (``_device``): one GPU runs one batch's kernels after another,
    while each instance's host work goes on beside them. No way of running is measured at load (``throughput``
    None, as on the CUDA provider): every size pays."""

    _device = threading.Lock()

    def __init__(self, path: Path, options: Any) -> None:
        super().__init__(path, options)
        self._base_ms = float(os.environ.get(BASE_MS_ENV, "0.8"))
        self._row_ms = float(os.environ.get(ROW_MS_ENV, "0.6"))

    def throughput(self, size: int, instances: int, runs: int = 2, min_seconds: float = 0.05,
                   apart: bool = False) -> float | None:
        return None

    def run_rows(self, parts: Sequence[Feeds], size: int, outputs: Sequence[str]) -> Outputs | None:
        return None  # merged, then ``run``

    def run_alone(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        return self.run(feeds, outputs)

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        rows = next(iter(feeds.values())).shape[0]
        with self._device:
            time.sleep(sleep_s(rows, self._base_ms, self._row_ms))
        return {s.name: np.zeros((rows, *(d if d > 0 else 1 for d in s.shape[1:])), s.dtype)
                for s in self.outputs if s.name in outputs}


def expand(value: str, env: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` in ``value`` from ``env`` (unknown ones stay as written)."""
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value)


def native_path() -> str:
    """PATH with ``.work/native`` (where ``make native`` puts trtop-http) first."""
    return os.pathsep.join([str(ROOT / ".work" / "native"), os.environ.get("PATH", "")])


def serve_once(flags: list[str], extra_env: dict[str, str], args: argparse.Namespace, model: Path) -> dict[str, Any]:
    """One fresh server with ``flags`` and ``extra_env``, one load run against it, the server's mean batch."""
    import loadclient  # the bench's neighbours (main puts bench/ on the path)
    from ready import wait_ready
    from serve import free_port, stop_server
    from serve_gpu import mean_batch, scrape, short_share

    port = free_port()
    env = {**os.environ, "PATH": native_path(), "TRTOP_DEVICE": "cpu", BASE_MS_ENV: str(args.base_ms),
           ROW_MS_ENV: str(args.row_ms),
           "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")])}
    env.update({var: expand(value, env) for var, value in extra_env.items()})
    cmd = [sys.executable, "-m", "trtop.cli", "serve", "--model", str(model), "--model-name", "fat",
           "--backend", "gpu_like:GpuLike", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0",
           "--log-level", "warning", *GPU_RULES, *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=server_env(env))
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", 120)
        result = loadclient.run(host="127.0.0.1", port=port, model="fat", input_name="input", shape=[3, 224, 224],
                                concurrency=args.connections, seconds=args.seconds, warmup=args.warmup,
                                procs=args.client_procs)
        batches = scrape(f"http://127.0.0.1:{port}")  # the whole run's, warm-up included
        result["mean_batch"], result["short_batches"] = mean_batch(batches), short_share(batches)
        return result
    finally:
        stop_server(proc)


def line(name: str, r: dict[str, Any]) -> str:
    from serve_gpu import SHORT_BATCH_ROWS

    return (f"{name}: {r['throughput']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms "
            f"(p99/p50 {r['p99_ms'] / r['p50_ms']:.2f}), mean batch {r['mean_batch']:.1f} "
            f"({100 * r['short_batches']:.0f}% of {SHORT_BATCH_ROWS} rows or fewer), errors {r['errors']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", default=[], help="NAME=FLAGS for the server (repeatable); "
                    "default: one configuration, i1=--instances=1 (TensorRT's default on a GPU)")
    ap.add_argument("--rounds", type=int, default=1, help="fresh servers per configuration, alternating")
    ap.add_argument("--connections", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--base-ms", type=float, default=0.8, help="a batch's fixed sleep")
    ap.add_argument("--row-ms", type=float, default=0.6, help="its sleep per row (0.6: 32 rows take 20 ms, so "
                    "128 clients of 602 KB stay within what two cores can carry)")
    args = ap.parse_args()
    sys.path.insert(0, str(BENCH))
    import models

    model = models.fat()
    configs = [parse_config(c) for c in args.config or ["i1=--instances=1"]]
    print(f"{args.connections} connections, 3x224x224 fp32 requests, runs of {args.base_ms:g} ms + "
          f"{args.row_ms:g} ms a row asleep; server flags {' '.join(GPU_RULES)}", flush=True)
    for rnd in range(args.rounds):
        for name, env, flags in configs:
            said = " ".join([*(f"{k}={v}" for k, v in env.items()), *flags]) or "no flags"
            print(line(f"{name} (round {rnd + 1}, {said})", serve_once(flags, env, args, model)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
