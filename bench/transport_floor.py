"""The floor under a lone request's latency that no Python HTTP server can go below: the bytes' trip.

    python3 bench/transport_floor.py --shape 3,224,224 --answer-bytes 4200 --server-cores 0 --client-cores 12

A raw server (blocking sockets, one connection: reads each request's head and ``Content-Length``
body into one preallocated buffer, answers a fixed body of ``--answer-bytes``) under the same
client as the real server's one-client row (``loadclient.py``: asyncio on uvloop, the same
binary v2 request of that shape). Its p50 is what moving the request in and the answer out over
loopback TCP costs, with both clients' and kernel's work in it and no server logic: a served
request's latency minus the engine's run cannot go below it. Prints one JSON line.

``--serve PORT --many`` runs the same no-logic answerer for many connections at once (an asyncio
protocol): ``bench/serve.py --floor`` puts its own client against it at every concurrency, which
is the most any server could serve with that client on those cores.

``--hold-ms H`` makes the one-connection server busy for H ms before each answer (it spins, as a
thread waiting on a CUDA stream does by default): the floor under a served request whose engine run
takes H ms. With H near the engine's batch-1 run the client waits as long as it does for a real
request, so its core may halt and wake as it does then (on the H200 host a halted core's wake-up
cost ~0.1-0.2 ms: docs/server.md, "Keeping the cores awake"); p50 - H is what the platform itself
adds to a request of that length, with no server logic at all.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadclient  # noqa: E402

_LENGTH = re.compile(rb"(?im)^content-length: *(\d+)")


def _hold(seconds: float) -> None:
    """Busy until ``seconds`` have passed: a thread waiting on a CUDA stream spins (CUDA's default
    wait while the process has fewer active contexts than cores), it does not sleep."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def serve(port: int, answer_bytes: int, hold_s: float = 0.0) -> None:
    """Answer every request on each connection, one connection at a time, until killed; ``hold_s``: busy
    that long before each answer (an engine's run)."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % answer_bytes + b"x" * answer_bytes
    listener = socket.create_server(("127.0.0.1", port))
    buffer = bytearray(64 << 20)
    view = memoryview(buffer)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got = 0
        while True:
            end = buffer.find(b"\r\n\r\n", 0, got)
            if end >= 0:
                match = _LENGTH.search(buffer, 0, end)
                need = end + 4 + (int(match.group(1)) if match else 0)
                if got >= need:
                    if hold_s:
                        _hold(hold_s)
                    conn.sendall(answer)
                    view[:got - need] = view[need:got]
                    got -= need
                    continue
            n = conn.recv_into(view[got:])
            if n == 0:
                conn.close()
                break
            got += n


class _Answerer:
    """An asyncio protocol with no logic: answers every whole request on its connection with a
    fixed reply (the many-connections floor: what the client and the kernel cost alone)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _LENGTH.search(buf, 0, end)
            need = end + 4 + (int(match.group(1)) if match else 0)
            if len(buf) < need:
                return
            del buf[:need]
            self.transport.write(self.answer)

    def connection_lost(self, exc: BaseException | None) -> None:
        pass

    def eof_received(self) -> None:
        pass


def serve_many(port: int, answer_bytes: int) -> None:
    """Answer every connection at once (uvloop where installed), until killed."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % answer_bytes + b"x" * answer_bytes

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Answerer(answer), "127.0.0.1", port)  # type: ignore[arg-type,return-value]
        await server.serve_forever()

    asyncio.run(run())


def floor(*, shape: list[int], answer_bytes: int, hold_ms: float, seconds: float, server_cores: str = "",
          client_cores: str = "") -> dict[str, Any]:
    """One connection's p50 against the raw server (spinning ``hold_ms`` before each answer) under
    ``loadclient``, and how far it is over the hold: what the platform adds with no server logic."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [sys.executable, __file__, "--serve", str(port), "--answer-bytes", str(answer_bytes),
           "--hold-ms", str(hold_ms)]
    if server_cores:
        cmd = ["taskset", "-c", server_cores, *cmd]
    server = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        got = loadclient.run(host="127.0.0.1", port=port, model="m", input_name="input", shape=shape, concurrency=1,
                             seconds=seconds, procs=1, cores=client_cores)
    finally:
        server.kill()
        server.wait()
    return {"hold_ms": hold_ms, "floor_p50_ms": round(got["p50_ms"], 3), "floor_p99_ms": round(got["p99_ms"], 3),
            "over_hold_ms": round(got["p50_ms"] - hold_ms, 3), "requests": got["requests"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--many", action="store_true", help="with --serve: answer every connection at once (asyncio)")
    p.add_argument("--shape", default="3,224,224", help="one request's input shape without the batch dim")
    p.add_argument("--answer-bytes", type=int, default=4200, help="the answer's body (ResNet-50: ~4,150)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--hold-ms", type=float, default=0.0,
                   help="spin this long before each answer (one connection): the floor under an engine run this long")
    p.add_argument("--server-cores", default="")
    p.add_argument("--client-cores", default="")
    args = p.parse_args()
    if args.serve:
        if args.many:
            serve_many(args.serve, args.answer_bytes)
        else:
            serve(args.serve, args.answer_bytes, args.hold_ms / 1000)
        return 0
    got = floor(shape=[int(d) for d in args.shape.split(",")], answer_bytes=args.answer_bytes,
                hold_ms=args.hold_ms, seconds=args.seconds, server_cores=args.server_cores,
                client_cores=args.client_cores)
    print(json.dumps(got), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
