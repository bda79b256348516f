"""Request rate of ``trtop serve``'s gRPC protocol on a tiny model (server overhead dominates).

    .venv/bin/python bench/grpc_rate.py                      # gRPC and HTTP, 1/16/64 in flight, 10 s each
    .venv/bin/python bench/grpc_rate.py --protocols grpc --levels 64 --seconds 5 --server-arg=--max-queue-delay-ms=0

The model is y = x + 1 on x: [batch, 16] FP32 (ONNX, written to ``.work/bench/``). One
server process (HTTP off to the side, gRPC on a free port); the client is this process:
grpc.aio, ``--channels`` HTTP/2 connections, ``concurrency`` coroutines each with one
ModelInfer in flight (closed loop), the request serialized once and the response left as
bytes (only its status is checked), so the client spends little CPU per call. For
comparison the same load over HTTP: one keep-alive connection per in-flight request, a
precomputed JSON request on raw asyncio sockets. Reports requests/s, p50/p99 and the
server's CPU microseconds per request (from /proc: the server process and its front-end
processes; and the engine process's alone, where one core caps the rate), which background
load on a shared machine disturbs less than the rate. On a
machine with 2 cores the server runs one front-end process (``--frontends`` auto).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from configs import server_env
from ready import wait_ready
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".work" / "bench"
MODEL = "tiny"
WIDTH = 16
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def tiny_onnx() -> Path:
    path = WORK / "tiny.onnx"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])
        one = numpy_helper.from_array(np.array(1, np.float32), "one")
        graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "tiny", [x], [y], [one])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, path)
    return path


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(http: int, grpc_port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "trtop.cli", "serve", "--model", str(tiny_onnx()), "--model-name", MODEL,
           "--host", "127.0.0.1", "--port", str(http), "--grpc-port", str(grpc_port), "--log-level", "warning",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=server_env(dict(os.environ)))
    wait_ready(proc, f"http://127.0.0.1:{http}", 60)
    return proc


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """CPU time of the server process and (``descendants``) its front-end processes."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree, grew = {pid}, descendants
    while grew:
        more = {p for p, f in stats.items() if int(f[1]) in tree} - tree
        tree |= more
        grew = bool(more)
    ticks = sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def request_bytes() -> bytes:
    x = np.ones((1, WIDTH), np.float32)
    return service_pb2.ModelInferRequest(
        model_name=MODEL, raw_input_contents=[x.tobytes()],
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, WIDTH])],
    ).SerializeToString()


def http_request_bytes() -> bytes:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [1.0] * WIDTH}]})
    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return (head + body).encode()


async def load(protocol: str, port: int, concurrency: int, channels: int, seconds: float,
               warmup: float) -> dict[str, float]:
    latencies: list[float] = []
    start = time.perf_counter() + warmup
    stop = start + seconds

    async def grpc_loop(call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes) -> None:
        while (t0 := time.perf_counter()) < stop:
            await call(payload)
            if t0 >= start:
                latencies.append(time.perf_counter() - t0)

    async def http_loop(payload: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (t0 := time.perf_counter()) < stop:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            if status != b"200":
                raise RuntimeError(f"HTTP {status.decode()}")
            if t0 >= start:
                latencies.append(time.perf_counter() - t0)
        writer.close()

    if protocol == "http":
        await asyncio.gather(*(http_loop(http_request_bytes()) for _ in range(concurrency)))
    else:
        opened = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                  for _ in range(channels)]
        calls = [c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in opened]
        await asyncio.gather(*(grpc_loop(calls[i % channels], request_bytes()) for i in range(concurrency)))
        for c in opened:
            await c.close()
    ms = np.array(latencies) * 1000
    return {"rps": len(latencies) / seconds, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "requests": len(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default="grpc,http", help="grpc, http or both")
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels (requests in flight)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=4, help="HTTP/2 connections the RPCs spread over")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `trtop serve` flag (repeatable)")
    args = parser.parse_args()
    http, port = free_port(), free_port()
    proc = start_server(http, port, args.server_arg)
    try:
        print(f"load average {os.getloadavg()[0]:.2f}; server flags: {' '.join(args.server_arg) or '(defaults)'}")
        print("| protocol | in flight | req/s | p50 ms | p99 ms | server CPU us/req | engine process CPU us/req |")
        print("|---|---|---|---|---|---|---|")
        for protocol in args.protocols.split(","):
            for level in (int(v) for v in args.levels.split(",")):
                warmup = 1.0
                cpu0, engine0 = cpu_seconds(proc.pid), cpu_seconds(proc.pid, descendants=False)
                r = asyncio.run(load(protocol, port if protocol == "grpc" else http, level,
                                     min(args.channels, level), args.seconds, warmup))
                cpu, engine = cpu_seconds(proc.pid) - cpu0, cpu_seconds(proc.pid, descendants=False) - engine0
                served = r["rps"] * (args.seconds + warmup)  # CPU covers the warm-up too
                print(f"| {protocol} | {level} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
                      f"| {cpu / served * 1e6:.0f} | {engine / served * 1e6:.0f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
