"""The server's own CPU per request, split by process, for two source trees side by side (A/B).

    .venv/bin/python bench/serve_overhead.py --tree before=/tmp/base/operator --tree after=operator \\
        --model fat --concurrency 1,8,32 --rounds 3 -- --frontends 1 --max-batch 32

Models: ``fat`` takes ResNet-50-shaped requests (1x3x224x224 FP32: 602 KB bodies, 4 KB
answers) and computes almost nothing (a max per channel and a 3x1000 MatMul), so what is
measured is the server handling the bytes: HTTP, the front-end, the hop to the engine;
``tiny`` (x: [1, 16]) is the request ceiling; ``light`` and ``mobilenet`` are bench/serve.py's models (there the
engine's CPU per request is mostly the model's own: how the server runs it shows). The client is ``loadclient.py`` (binary v2
tensors over keep-alive connections, two processes). The trees alternate round by round
(a loaded machine drifts) and the table shows each one's median over the rounds: req/s,
p50/p99 and the CPU ms per request of the engine process and of its front-end processes.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import loadclient  # noqa: E402
import models  # noqa: E402
from configs import server_env  # noqa: E402
from ready import wait_ready  # noqa: E402




def mobilenet() -> Path:
    """bench/serve.py's MobileNetV2 (Keras -> ONNX, built there once: it needs TensorFlow)."""
    import serve

    serve.ensure_model(need_keras=False)
    return serve.ONNX


MODELS = {"fat": (models.fat, "input", [3, 224, 224]), "tiny": (models.tiny, "x", [16]),
          "light": (models.light, "x", [3, 64, 64]), "mobilenet": (mobilenet, "keras_tensor", [224, 224, 3])}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def serve(tree: str, model: Path, name: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = server_env({**os.environ, "TRTOP_DEVICE": "cpu", "PYTHONPATH": tree})
    proc = subprocess.Popen([sys.executable, "-m", "trtop.cli", "serve", "--model", str(model), "--model-name", name,
                             "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0", "--log-level", "warning",
                             *extra], env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}", 60)
    return proc, port


def one_round(tree: str, args: argparse.Namespace, extra: list[str]) -> list[dict[str, Any]]:
    build, input_name, shape = MODELS[args.model]
    proc, port = serve(tree, build(), args.model, extra)
    rows = []
    try:
        for c in (int(x) for x in args.concurrency.split(",")):
            engine, frontends = proc.pid, children(proc.pid)
            before = [cpu_seconds(p) for p in (engine, *frontends)]
            got = loadclient.run(host="127.0.0.1", port=port, model=args.model, input_name=input_name, shape=shape,
                                 concurrency=c, seconds=args.seconds, warmup=0.5, procs=2)
            after = [cpu_seconds(p) for p in (engine, *frontends)]
            n = max(1, got["requests"])
            spent = [(a - b) * 1000 / n for a, b in zip(after, before, strict=True)]
            rows.append({"concurrency": c, **got, "engine_ms": spent[0], "frontends_ms": sum(spent[1:])})
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, help="LABEL=PYTHONPATH of a source tree (repeatable)")
    p.add_argument("--model", choices=sorted(MODELS), default="fat")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("server_args", nargs="*", help="server flags, after --")
    args = p.parse_args()
    trees = [t.split("=", 1) for t in args.tree]
    results: dict[str, list[list[dict[str, Any]]]] = {label: [] for label, _ in trees}
    for _ in range(args.rounds):
        for label, tree in trees:
            results[label].append(one_round(tree, args, args.server_args))
    print(f"\n{args.model}, server flags {' '.join(args.server_args) or '(defaults)'}, median of {args.rounds} rounds:\n")
    print("| tree | concurrency | req/s | p50 ms | p99 ms | engine CPU ms/req | front-ends CPU ms/req |")
    print("|---|---|---|---|---|---|---|")
    for label, _ in trees:
        for i, row in enumerate(results[label][0]):
            med = {k: statistics.median(r[i][k] for r in results[label])
                   for k in ("throughput", "p50_ms", "p99_ms", "engine_ms", "frontends_ms")}
            print(f"| {label} | {row['concurrency']} | {med['throughput']:,.0f} | {med['p50_ms']:.2f} | "
                  f"{med['p99_ms']:.2f} | {med['engine_ms']:.3f} | {med['frontends_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
