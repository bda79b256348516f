"""Where a lone request's time goes across the server's processes: stamps from the client, the native
or Python front-end and the engine process, on one clock.

    PATH=.work/native:$PATH PYTHONPATH=operator python3 bench/trace_lone.py --model .work/bench/light.onnx \\
        --model-name light --input x --shape 3,64,64 --config native=--http-frontend=native --config python= --rounds 2
    ... --config new= --config 'old=PYTHONPATH=/tmp/old/operator --frontends=2' --rounds 2     # two trees, alternating

For each ``--config`` (label=trtop serve flags, split at spaces: ``bench/configs.py``) and round, it starts ``trtop serve`` with
stage stamps on (``bench/trace/sitecustomize.py`` in every Python process, ``TRTOP_HTTP_TRACE`` in the
native front-end: both write CLOCK_MONOTONIC nanoseconds), sends ``--requests`` binary v2 requests one
after another over one keep-alive connection (this process is the client, on ``--client-cores``), and
lines every stamp up with the client request it fell in. The requests whose stamps came in the most
common order (others: a metrics report or health check crossed them) give the median, p10 and p90 of
each step, from the client's send (``c_send``) to its read of the whole answer (``c_recv``). Stamping
costs ~1-3 us per stamp; the client's p50 without stamps is printed for comparison (``--plain``).
One process, one connection at a time: concurrent requests' stamps would mix.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "operator")]
from loadclient import request_bytes  # noqa: E402
from serve import free_port  # noqa: E402
from configs import config_words, split_env  # noqa: E402
from serve_gpu import DEVICE, Server  # noqa: E402

_LENGTH = re.compile(rb"(?im)^content-length: *(\d+)")


def serve_and_time(args: argparse.Namespace, flags: list[str], folder: Path | None, log: Path,
                   payload: bytes) -> list[tuple[int, int]]:
    """``trtop serve`` from ``--operator``, with stamps into ``folder`` (None: without), timed by
    ``lone_requests``, then stopped. ``flags`` may begin with ``VAR=value`` words for the server's environment
    (``server_env``)."""
    extra, flags = server_env(flags)
    pythonpath = [extra.pop("PYTHONPATH", args.operator), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    env = {"TRTOP_DEVICE": os.environ.get("TRTOP_DEVICE", DEVICE), **extra}
    if folder is not None:
        pythonpath.insert(0, str(ROOT / "bench" / "trace"))
        env["TRTOP_TRACE_DIR"] = env["TRTOP_HTTP_TRACE"] = str(folder)
    env["PYTHONPATH"] = ":".join(pythonpath)
    port = free_port()
    server = Server(Path(args.model), args.model_name, port, 0, flags, log, args.server_cores, env=env)
    try:
        return lone_requests(port, payload, args.warmup, args.requests)
    finally:
        server.stop()


def server_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """A config's leading ``VAR=value`` words (the server's environment) apart from its ``trtop serve`` flags, as
    ``serve_gpu.py --config`` takes them (``configs.split_env``). ``PYTHONPATH=DIR`` serves another tree (it takes
    ``--operator``'s place; the stamps' folder still comes first), so two trees can alternate round by round in one
    run."""
    return split_env(words)


def lone_requests(port: int, payload: bytes, warmup: int, n: int) -> list[tuple[int, int]]:
    """(sent, answered) monotonic ns of ``n`` requests one after another on one connection."""
    clock = time.monotonic_ns
    out: list[tuple[int, int]] = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        for i in range(warmup + n):
            t0 = clock()
            s.sendall(payload)
            while (end := buf.find(b"\r\n\r\n")) < 0:
                buf += s.recv(1 << 20)
            match = _LENGTH.search(bytes(buf[:end]))
            total = end + 4 + (int(match.group(1)) if match else 0)
            while len(buf) < total:
                buf += s.recv(1 << 20)
            t1 = clock()
            if buf[9:12] != b"200":
                raise RuntimeError(f"request failed: {bytes(buf[:200])!r}")
            del buf[:total]
            if i >= warmup:
                out.append((t0, t1))
    return out


def read_stamps(folder: Path) -> list[tuple[int, str]]:
    events: list[tuple[int, str]] = []
    for f in folder.glob("*.txt"):
        for line in f.read_text().splitlines():
            name, _, t = line.partition(" ")
            if t.isdigit():
                events.append((int(t), name))
    events.sort()
    return events


def steps(windows: list[tuple[int, int]], events: list[tuple[int, str]]) -> dict[str, Any]:
    """The stamps inside each client window, the most common order, and each step's spread (us)."""
    times = np.array([t for t, _ in events], dtype=np.int64)
    orders: dict[tuple[str, ...], list[list[int]]] = collections.defaultdict(list)
    for t0, t1 in windows:
        lo, hi = np.searchsorted(times, t0), np.searchsorted(times, t1)
        names = ("c_send", *(events[i][1] for i in range(lo, hi)), "c_recv")
        orders[names].append([t0, *(events[i][0] for i in range(lo, hi)), t1])
    order, rows = max(orders.items(), key=lambda kv: len(kv[1]))
    d = np.diff(np.array(rows, dtype=np.int64), axis=1) / 1000.0
    total = (np.array([r[-1] - r[0] for r in rows]) / 1000.0)
    return {"order": list(order), "matched": len(rows), "windows": len(windows),
            "steps": [{"step": f"{a} -> {b}", "p50": float(np.percentile(d[:, i], 50)),
                       "p10": float(np.percentile(d[:, i], 10)), "p90": float(np.percentile(d[:, i], 90))}
                      for i, (a, b) in enumerate(zip(order, order[1:]))],
            "total_p50": float(np.percentile(total, 50))}


def table(label: str, result: dict[str, Any]) -> str:
    lines = [f"### {label}: {result['matched']} of {result['windows']} requests in this order; client p50 "
             f"{result['total_p50']:.1f} us with stamps, {result.get('plain_p50', float('nan')):.1f} us without", "",
             "| step | p50 us | p10 | p90 |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['p50']:.1f} | {s['p10']:.1f} | {s['p90']:.1f} |" for s in result["steps"]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--input", default="input")
    ap.add_argument("--shape", required=True, help="one request's input shape without the batch, e.g. 3,224,224")
    ap.add_argument("--config", action="append", default=[],
                    help="label=trtop serve flags (split at spaces), after VAR=value words for the server's "
                         "environment (old=PYTHONPATH=/x/operator: another tree, alternating with the others)")
    ap.add_argument("--rounds", type=int, default=1, help="configs alternate round by round")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--server-cores", default="")
    ap.add_argument("--client-cores", default="")
    ap.add_argument("--plain", action="store_true", help="also time each config without stamps (the stamps' cost)")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    ap.add_argument("--operator", default=str(ROOT / "operator"),
                    help="the source tree to serve from (another revision's operator/ folder: an A/B on one machine)")
    args = ap.parse_args()
    if args.client_cores:  # this process is the client
        subprocess.run(["taskset", "-a", "-p", "-c", args.client_cores, str(os.getpid())], check=True,
                       stdout=subprocess.DEVNULL)
    configs = [config_words(c) for c in args.config] or [("default", [])]  # serve_and_time splits off the env
    payload = request_bytes("127.0.0.1", 0, args.model_name, args.input, [int(d) for d in args.shape.split(",")])
    work = Path(tempfile.mkdtemp(prefix="trace-lone-"))
    results: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    try:
        for r in range(args.rounds):
            for label, flags in configs:
                folder = work / f"{label}-{r}"
                folder.mkdir()
                plain = float("nan")
                if args.plain:
                    w = serve_and_time(args, flags, None, work / f"{label}-{r}-plain.log", payload)
                    plain = float(np.percentile([(b - a) / 1000 for a, b in w], 50))
                windows = serve_and_time(args, flags, folder, work / f"{label}-{r}.log", payload)
                result = {**steps(windows, read_stamps(folder)), "plain_p50": plain, "round": r, "flags": flags}
                results[label].append(result)
                print(table(f"{label}, round {r + 1}", result) + "\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
