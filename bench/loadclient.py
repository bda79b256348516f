"""A closed-loop HTTP load client in several processes (binary v2 tensors, keep-alive connections).

A cross-check for ``perf_analyzer`` where it cannot be used: it copies every request's input
into its per-request records (``InferContext::GetInputs`` in its ``infer_context.cc``), so
with 602 KB images it holds ~2 GB per second of load and was OOM-killed at 64-128 clients on
the H200 host. This client sends one prebuilt request over and over on raw asyncio sockets
(``connections`` split over ``procs`` processes, each optionally pinned with ``taskset``),
and reports throughput and latency percentiles over the window after a warm-up.
With ``--shared-memory`` the client speaks Triton's system shared memory extension (the server runs
with ``--shared-memory system``), as a sidecar in the server's pod would: each process writes the input
once into a ``/dev/shm`` region, each connection gets a region for the outputs, and a request is a
JSON header naming them (no tensor bytes on the socket).
Used by ``serve_gpu.py --client own``; runnable alone:

    python3 bench/loadclient.py --port 8000 --model resnet50 --input input --shape 3,224,224 -c 64
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import numpy as np

_LENGTH = re.compile(rb"(?im)^content-length: *(\d+)")


def request_bytes(host: str, port: int, model: str, input_name: str, shape: list[int],
                  regions: tuple[str, list[tuple[str, str, int, int]]] | None = None) -> bytes:
    """One request's bytes: the input as a binary tensor, or (``regions``: the input's region and each
    output's name, region, offset and byte size) a JSON header naming shared memory regions."""
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    if regions is not None:
        in_region, outputs = regions
        body = json.dumps({
            "inputs": [{"name": input_name, "shape": [1, *shape], "datatype": "FP32", "parameters": {
                "shared_memory_region": in_region, "shared_memory_byte_size": x.nbytes}}],
            "outputs": [{"name": name, "parameters": {"shared_memory_region": region, "shared_memory_offset": offset,
                                                      "shared_memory_byte_size": nbytes}}
                        for name, region, offset, nbytes in outputs]}).encode()
        head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        return head.encode() + body
    header = json.dumps({"inputs": [{"name": input_name, "shape": [1, *shape], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body = header + x.tobytes()
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Regions:
    """This process's shared memory regions, registered with the server, unregistered and unlinked by ``close``:
    one for the input (written once), one for the outputs with a window per connection."""

    def __init__(self, host: str, port: int, model: str, shape: list[int], connections: int) -> None:
        from multiprocessing import shared_memory

        self.base = f"http://{host}:{port}/v2"
        self.objects: list[Any] = []
        self.names: list[str] = []
        tag = f"loadclient-{os.getpid()}"
        x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
        self.input = self._make(shared_memory, f"{tag}-in", x.nbytes)
        np.ndarray(x.shape, x.dtype, buffer=self.objects[-1].buf)[:] = x
        meta = json.loads(_http("GET", f"{self.base}/models/{model}"))
        sizes = [(o["name"], -(-int(np.prod([1 if d < 0 else d for d in o["shape"]])) * np.dtype(
            o["datatype"].lower().replace("fp", "float")).itemsize // 64) * 64) for o in meta["outputs"]]
        row = sum(n for _, n in sizes)
        out = self._make(shared_memory, f"{tag}-out", row * connections)
        self.outputs: list[list[tuple[str, str, int, int]]] = []
        for c in range(connections):
            offset, per = c * row, []
            for name, nbytes in sizes:
                per.append((name, out, offset, nbytes))
                offset += nbytes
            self.outputs.append(per)

    def _make(self, shared_memory: Any, name: str, nbytes: int) -> str:
        obj = shared_memory.SharedMemory(name, create=True, size=nbytes)
        self.objects.append(obj)
        self.names.append(name)
        _http("POST", f"{self.base}/systemsharedmemory/region/{name}/register",
              json.dumps({"key": "/" + name, "offset": 0, "byte_size": nbytes}).encode())
        return name

    def close(self) -> None:
        for name in self.names:
            _http("POST", f"{self.base}/systemsharedmemory/region/{name}/unregister", b"")
        for obj in self.objects:
            obj.close()
            obj.unlink()


def _http(method: str, url: str, body: bytes | None = None) -> bytes:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), timeout=30) as answer:
        return bytes(answer.read())


async def _connection(host: str, port: int, payload: bytes, start: float, stop: float,
                      lat: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    while (t0 := time.perf_counter()) < stop:
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        match = _LENGTH.search(head)
        await reader.readexactly(int(match.group(1)) if match else 0)
        if head[9:12] != b"200":
            errors.append(int(head[9:12]))
        elif t0 >= start:
            lat.append(time.perf_counter() - t0)
    writer.close()


def _worker(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    shape = [int(d) for d in args.shape.split(",")]
    regions = Regions(args.host, args.port, args.model, shape, args.connections) if args.shared_memory else None
    payloads = [request_bytes(args.host, args.port, args.model, args.input, shape,
                              None if regions is None else (regions.input, regions.outputs[c]))
                for c in range(args.connections)]
    lat: list[float] = []
    errors: list[int] = []

    async def go() -> None:
        start = time.perf_counter() + args.warmup
        stop = start + args.seconds
        await asyncio.gather(*(_connection(args.host, args.port, payload, start, stop, lat, errors)
                               for payload in payloads))

    try:
        asyncio.run(go())
    finally:
        if regions is not None:
            regions.close()
    np.asarray(lat, dtype=np.float64).tofile(args.out)  # a file: a pipe may not take it all at once
    print(json.dumps({"errors": len(errors)}), flush=True)


def run(*, host: str, port: int, model: str, input_name: str, shape: list[int], concurrency: int,
        seconds: float, warmup: float = 1.0, procs: int = 4, cores: str = "", shared_memory: bool = False,
        ) -> dict[str, Any]:
    """Throughput and latency of ``concurrency`` connections over ``procs`` processes (``shared_memory``:
    tensors in system shared memory regions, not in the requests)."""
    import tempfile

    procs = max(1, min(procs, concurrency))
    children = []
    folder = tempfile.mkdtemp(prefix="loadclient-")
    outs = [f"{folder}/lat-{i}.f64" for i in range(procs)]
    for i in range(procs):
        n = concurrency // procs + (1 if i < concurrency % procs else 0)
        cmd = [sys.executable, __file__, "--worker", "--host", host, "--port", str(port), "--model", model,
               "--input", input_name, "--shape", ",".join(map(str, shape)), "-c", str(n),
               "--seconds", str(seconds), "--warmup", str(warmup), "--out", outs[i],
               *(["--shared-memory"] if shared_memory else [])]
        if cores:
            cmd = ["taskset", "-c", cores, *cmd]
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    lat: list[float] = []
    errors = 0
    for child, path in zip(children, outs, strict=True):
        out, _ = child.communicate(timeout=seconds + warmup + 120)
        if child.returncode != 0:
            raise RuntimeError(f"a client process failed ({child.returncode}): {out[-500:]}")
        errors += json.loads(out.strip().splitlines()[-1])["errors"]
        lat += np.fromfile(path, dtype=np.float64).tolist()
        os.unlink(path)
    os.rmdir(folder)
    ms = np.array(lat) * 1000 if lat else np.array([float("nan")])
    return {"throughput": len(lat) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": errors, "requests": len(lat)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--shape", required=True, help="one request's shape without the batch dim, e.g. 3,224,224")
    p.add_argument("-c", "--connections", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--cores", default="", help="taskset -c list for the client processes")
    p.add_argument("--shared-memory", action="store_true",
                   help="tensors in system shared memory regions (the server needs --shared-memory system)")
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return 0
    print(json.dumps(run(host=args.host, port=args.port, model=args.model, input_name=args.input,
                         shape=[int(d) for d in args.shape.split(",")], concurrency=args.connections,
                         seconds=args.seconds, warmup=args.warmup, procs=args.procs, cores=args.cores,
                         shared_memory=args.shared_memory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
