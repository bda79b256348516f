"""Benchmark of ``trtop serve``: closed-loop load against a model on ONNX Runtime (CPU).

    .venv/bin/python bench/serve.py                  # MobileNetV2, full run, a few minutes
    .venv/bin/python bench/serve.py --quick          # shorter windows, for a smoke check
    .venv/bin/python bench/serve.py --model light    # a few small convs: the server's own cost dominates

Measures, in one run and on the same machine:
- the backend's own best: ONNX Runtime in-process, no server, best batch size;
- ``trtop serve`` with dynamic batching at concurrency 1, 8, 32, 64;
- the same server without batching (``--max-batch 1``);
- the seed's way: TensorFlow ``model.predict`` per request (batch 1, one caller).
Targets (issue P8): at concurrency 64, throughput >= 0.85 x the in-process best for
MobileNetV2 and >= 0.5 x for the light model; at concurrency 1, p50 <= the in-process
batch-1 latency (the better of one thread and every core) + 0.3 ms; p99 <= 2.5 x p50. Both
are also judged on ``--paired-rounds`` alternating windows of the engine alone and the server
(a shared machine's speed drifts: both figures of a pair move alike; the verdict of a pair
series is its median).

The model is MobileNetV2 224x224 with random weights (``tf.keras.applications``,
``weights=None``: no download) exported to ONNX with tf2onnx, cached under
``.work/bench/``. Load comes from a separate client process (asyncio on raw sockets,
binary tensor extension, one precomputed request) so the client costs little CPU; on a
small machine it still shares the cores with the server, which the table includes.
``--floor`` also loads a server with no logic at all (``transport_floor.py --many``: it answers
each request with a fixed reply of the real answer's size) with the same client at the same
concurrencies: what the client, the kernel and the shared cores allow any server to reach.
``--client-cores`` puts the client on cores of its own (``taskset -c 2,3 python3 bench/serve.py --model light
--client-cores 12-15`` on a larger host): the engine, the server and the in-process best share the bench's
cores and the client's cost is no longer theirs.
Results are also written to ``.work/bench/serve-<model>-results.json``; the servers' logs, at info, to
``.work/bench/serve-server.log``, and their start-up choices (a lone request's threads, the rows per second by
batch size) are printed as they start.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from configs import server_env
from ready import wait_ready

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".work" / "bench"
ONNX = WORK / "mobilenetv2.onnx"
KERAS = WORK / "mobilenetv2.keras"
SAVED = WORK / "mobilenetv2_savedmodel"
MODEL = "mobilenet"
SHAPE: tuple[int, ...] = (224, 224, 3)
TARGET_RATIO, TARGET_TAIL, TARGET_IDLE_MS = 0.85, 2.5, 0.3
TARGET_CONCURRENCY = 64
# model -> (per-row input shape, throughput target at TARGET_CONCURRENCY)
MODELS: dict[str, tuple[tuple[int, ...], float]] = {
    "mobilenet": ((224, 224, 3), 0.85), "light": ((3, 64, 64), 0.5), "tiny": ((16,), 0.5)}


def use_model(name: str) -> None:
    """Point the module's globals at one model (the client process gets the same flag)."""
    global ONNX, MODEL, SHAPE, TARGET_RATIO
    SHAPE, TARGET_RATIO = MODELS[name]
    MODEL = name
    if name != "mobilenet":
        sys.path.insert(0, str(ROOT / "bench"))
        import models

        ONNX = models.BUILDERS[name]()


# -- the model --------------------------------------------------------------------------
def ensure_model(need_keras: bool = True) -> None:
    if MODEL != "mobilenet" or (ONNX.exists() and (KERAS.exists() or not need_keras)):
        return
    WORK.mkdir(parents=True, exist_ok=True)
    print("building MobileNetV2 (random weights) and converting it to ONNX ...", flush=True)
    code = (
        "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'\n"
        "import tensorflow as tf\n"
        "m = tf.keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))\n"
        f"m.save({str(KERAS)!r}); m.export({str(SAVED)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(SAVED), "--output", str(ONNX),
                    "--opset", "17"], check=True, capture_output=True)


def input_name() -> str:
    import onnxruntime as ort

    return str(ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"]).get_inputs()[0].name)


# -- baselines --------------------------------------------------------------------------
def bench_inprocess(seconds: float, cpu_ms: dict[str, float]) -> dict[str, float]:
    """img/s of ONNX Runtime alone, by way of running and batch size (the server's session options).

    Two ways: one run at a time using every core (intra-op threads = cores), and one
    single-threaded run per core side by side (what ``--instances`` does); the best of all
    is the limit of this machine. ``cpu_ms`` receives the CPU milliseconds spent per image.
    """
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
    from trtop.serve.runtime import RuntimeOptions, default_threads

    cores = default_threads()
    result = {}
    cpu_ms["b1_p50_ms"], cpu_ms["b1_threads"] = inprocess_b1_p50(seconds)
    for workers, threads in ((1, cores), (cores, 1)):
        rt = OnnxRuntime(ONNX, RuntimeOptions(threads=threads, use_gpu=False))
        for batch in (1, 8, 32):
            way = f"{workers}x{threads}t b{batch}"
            result[way], cpu_ms[way] = way_throughput(rt, workers, batch, seconds)
        rt.close()
    return result


def way_throughput(rt: Any, workers: int, batch: int, seconds: float) -> tuple[float, float]:
    """(img/s, CPU ms per image) of ``workers`` threads each running batches of ``batch`` on ``rt``."""
    from concurrent.futures import ThreadPoolExecutor

    name, out = rt.inputs[0].name, [rt.outputs[0].name]
    x = np.random.rand(batch, *SHAPE).astype(np.float32)
    rt.run({name: x}, out)
    stop = time.perf_counter() + seconds

    def loop() -> int:
        n = 0
        while time.perf_counter() < stop:
            rt.run({name: x}, out)
            n += batch
        return n

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        done = sum(pool.map(lambda _: loop(), range(workers)))
    return done / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / done


def paired_load(proc: subprocess.Popen[bytes], port: int, way: str, concurrency: int, rounds: int,
                seconds: float) -> list[tuple[float, float]]:
    """(in-process img/s the best way, served img/s at ``concurrency``) in alternating windows: on a shared VM
    the in-process best moved 146 -> 239 img/s between the start and the end of one run, so a ratio against
    one early figure says more about the neighbours than about the server."""
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
    from trtop.serve.runtime import RuntimeOptions

    workers, rest = way.split("x", 1)
    threads, batch = rest.split("t b")
    rt = OnnxRuntime(ONNX, RuntimeOptions(threads=int(threads), use_gpu=False))
    try:
        pairs = []
        for _ in range(rounds):
            alone, _ = way_throughput(rt, int(workers), int(batch), seconds)
            served = run_load(proc, port, concurrency, seconds, 0.5)["throughput"]
            pairs.append((alone, served))
        return pairs
    finally:
        rt.close()


def inprocess_b1_p50(seconds: float) -> tuple[float, int]:
    """The engine's best batch-1 p50 (ms) alone, and the intra-op threads it took: one thread and every
    core are measured in alternating windows (on a small machine one thread is often faster for a light
    model: 0.050 vs 0.074 ms on 2 cores; MobileNetV2 0.88-1.16 x), and the better is the reference of the
    one-connection target, whichever the server picks."""
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
    from trtop.serve.runtime import RuntimeOptions, default_threads

    ways = sorted({1, default_threads()})
    runtimes = {t: OnnxRuntime(ONNX, RuntimeOptions(threads=t, use_gpu=False)) for t in ways}
    try:
        lat: dict[int, list[float]] = {t: [] for t in ways}
        x = np.random.rand(1, *SHAPE).astype(np.float32)
        for rt in runtimes.values():
            for _ in range(10):
                rt.run({rt.inputs[0].name: x}, [rt.outputs[0].name])
        for _ in range(4):  # alternating windows: a drifting machine moves both alike
            for t, rt in runtimes.items():
                name, out = rt.inputs[0].name, [rt.outputs[0].name]
                stop = time.perf_counter() + seconds / 4 / len(ways)
                while time.perf_counter() < stop:
                    begin = time.perf_counter()
                    rt.run({name: x}, out)
                    lat[t].append(time.perf_counter() - begin)
        p50 = {t: float(np.percentile(np.array(v) * 1000, 50)) for t, v in lat.items()}
        best = min(p50, key=lambda t: p50[t])
        return p50[best], best
    finally:
        for rt in runtimes.values():
            rt.close()


def paired_idle(proc: subprocess.Popen[bytes], port: int, rounds: int, seconds: float) -> list[tuple[float, float]]:
    """(in-process batch-1 p50, served one-connection p50) in alternating windows, ms: a machine whose speed
    drifts (a shared VM: the batch-1 reference moved 6.4-8.2 ms between runs on the H200 host) moves both
    figures of a pair alike, so the pairs' differences are what the server adds."""
    pairs = []
    for _ in range(rounds):
        b1, _ = inprocess_b1_p50(seconds)
        served = run_load(proc, port, 1, seconds, 0.3)["p50_ms"]
        pairs.append((b1, served))
    return pairs


def bench_tf_predict(seconds: float) -> dict[str, float]:
    """The seed's way: ``model.predict`` on one image per request, one caller."""
    code = f"""
import os, time, json; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import numpy as np, tensorflow as tf
m = tf.keras.models.load_model({str(KERAS)!r})
x = np.random.rand(1, 224, 224, 3).astype(np.float32)
m.predict(x, verbose=0)
lat = []; start = time.perf_counter()
while time.perf_counter() - start < {seconds}:
    t = time.perf_counter(); m.predict(x, verbose=0); lat.append(time.perf_counter() - t)
print(json.dumps({{"n": len(lat), "seconds": time.perf_counter() - start, "lat": lat}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    doc = json.loads(out.strip().splitlines()[-1])
    lat = np.array(doc["lat"]) * 1000
    return {"throughput": doc["n"] / doc["seconds"], "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


# -- the server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLIENT_TASKSET: list[str] = []  # taskset -c CORES for the client (--client-cores); empty: the bench's own cores
NATIVE_PATH: list[str] = []  # the folder of trtop-http when this run built it (--native build)


# Every server a run starts writes here, one after another, at info: what it chose at start-up (a lone request's
# threads, the rows per second of each batch size) decides figures a table only shows.
SERVER_LOG = WORK / "serve-server.log"
# start-up lines printed with the bench's own (the choices a one-connection or a loaded figure depends on)
CHOICES = ("lone runs", "rows per second", "cores not kept awake", "keeping", "at ")


def start_server(port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "trtop.cli", "serve", "--model", str(ONNX), "--model-name", MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0", "--log-level", "info", *extra]
    env = server_env({**os.environ, "TRTOP_DEVICE": "cpu"})  # a CPU benchmark, also on a machine with a GPU
    if NATIVE_PATH:  # the server finds trtop-http and uses it (--http-frontend auto), as in the images
        env["PATH"] = os.pathsep.join([*NATIVE_PATH, env.get("PATH", "")])
    start = SERVER_LOG.stat().st_size if SERVER_LOG.exists() else 0
    with SERVER_LOG.open("ab") as log:
        log.write(f"=== trtop serve {' '.join(extra)}\n".encode())
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}", 60, why_exited=lambda: server_said(start)[-3000:])
    for line in server_said(start).splitlines():
        message = line.split(": ", 1)[-1]
        if message.startswith(CHOICES):
            print(f"  server: {message}", flush=True)
    return proc


def server_said(start: int) -> str:
    """What the servers wrote to ``SERVER_LOG`` from byte ``start`` on."""
    with SERVER_LOG.open("rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of the server's batch size histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = float(re.search(r"^trtop_inference_batch_size_sum\{[^}]*\} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^trtop_inference_batch_size_count\{[^}]*\} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far (Linux /proc): the engine
    process and its front-end processes."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def answer_bytes(port: int) -> int:
    """The body length of the server's answer to the benchmark's request (for the floor's replies)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request_bytes(port, input_name()))
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        head = got.split(b"\r\n\r\n", 1)[0]
    return int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]


def start_floor(port: int, answer: int) -> subprocess.Popen[bytes]:
    """A server with no logic at all (``transport_floor.py --many``): answers each request at once."""
    cmd = [sys.executable, str(ROOT / "bench" / "transport_floor.py"), "--serve", str(port), "--many",
           "--answer-bytes", str(answer)]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the floor server did not listen within 10s")


def run_load(proc: subprocess.Popen[bytes], port: int, concurrency: int, seconds: float,
             warmup: float, *, batches: bool = True) -> dict[str, float]:
    before = batch_stats(port) if batches else (0.0, 0.0)
    server_cpu = cpu_seconds(proc.pid)
    client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [*CLIENT_TASKSET, sys.executable, __file__, "--client", "--port", str(port), "--concurrency", str(concurrency),
           "--duration", str(seconds), "--warmup", str(warmup), "--model", MODEL]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    server_cpu = cpu_seconds(proc.pid) - server_cpu
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = usage.ru_utime + usage.ru_stime - client_cpu.ru_utime - client_cpu.ru_stime
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    after = batch_stats(port) if batches else (0.0, 0.0)
    result["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    # CPU per image over the whole client run (warm-up included): server + client.
    result["server_cpu_ms"] = server_cpu * 1000 / result["all_requests"]
    result["client_cpu_ms"] = client * 1000 / result["all_requests"]
    return result


# -- the client process -----------------------------------------------------------------
def request_bytes(port: int, name: str) -> bytes:
    """One binary-tensor infer request of one row (loadclient's, for this module's model)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import loadclient

    return loadclient.request_bytes("127.0.0.1", port, MODEL, name, list(SHAPE))


async def _connection(port: int, payload: bytes, start: float, stop: float, lat: list[float],
                      errors: list[int], done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        t0 = time.perf_counter()
        if t0 >= stop:
            break
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        t1 = time.perf_counter()
        done[0] += 1
        if status != 200:
            errors.append(status)
        elif t0 >= start:
            lat.append(t1 - t0)
    writer.close()


async def _client(port: int, concurrency: int, seconds: float, warmup: float) -> dict[str, float]:
    payload = request_bytes(port, input_name())
    lat: list[float] = []
    errors: list[int] = []
    done = [0]
    start = time.perf_counter() + warmup
    stop = start + seconds
    await asyncio.gather(*(_connection(port, payload, start, stop, lat, errors, done) for _ in range(concurrency)))
    ms = np.array(lat) * 1000
    return {"concurrency": concurrency, "requests": len(lat), "all_requests": done[0], "errors": len(errors),
            "throughput": len(lat) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def client_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_client(args.port, int(args.concurrency), args.duration, args.warmup))))


# -- the report ---------------------------------------------------------------------------
# The server's flags for the batched run (bench/serve.py --server-arg adds to both runs).
BATCHED_FLAGS = ["--max-batch", "32"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows (smoke check)")
    p.add_argument("--model", choices=sorted(MODELS), default="mobilenet")
    p.add_argument("--skip-unbatched", action="store_true")
    p.add_argument("--duration", type=float, default=0, help="seconds per load point")
    p.add_argument("--concurrency", default="1,8,32,64")
    p.add_argument("--server-arg", action="append", default=[], help="extra server flag for both runs (repeatable)")
    p.add_argument("--batched-arg", action="append", default=[], help="extra server flag for the batched run")
    p.add_argument("--skip-tf", action="store_true")
    p.add_argument("--floor", action="store_true",
                   help="also load a server with no logic (the same client): the most any server could serve here")
    p.add_argument("--paired-rounds", type=int, default=3,
                   help="alternating windows of the engine alone and the server, at concurrency 1 (batch-1 p50) "
                        "and at the target concurrency (the in-process best way's img/s); 0: none")
    p.add_argument("--native", action="store_true",
                   help="serve through the native HTTP front-end (trtop-http, built now; --http-frontend native: "
                        "the server images' default); without it Python front-ends (--http-frontend python)")
    p.add_argument("--client-cores", default="",
                   help="run the client on these cores (taskset -c list) and so apart from the server, which "
                        "runs on the bench's own cores (start it under taskset): the server's cost without the "
                        "client's on the same cores")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    use_model(args.model)
    if args.client:
        client_main(args)
        return 0
    if args.client_cores:
        CLIENT_TASKSET.extend(["taskset", "-c", args.client_cores])
    seconds = args.duration or (3.0 if args.quick else 8.0)
    warmup = 1.0 if args.quick else 2.0
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.native:
        from trtop_dev.native import build_http_frontend

        NATIVE_PATH.append(str(build_http_frontend().parent))
        args.server_arg = ["--http-frontend", "native", *args.server_arg]
    elif not any(a.startswith("--http-frontend") for a in args.server_arg):
        # Named: the server's default (auto) takes trtop-http wherever it is on PATH, as in the images.
        args.server_arg = ["--http-frontend", "python", *args.server_arg]
    print(f"front-ends: {' '.join(args.server_arg)}"
          + (f" (trtop-http from {NATIVE_PATH[0]})" if NATIVE_PATH else " (the server images' default: --native)"))
    ensure_model(need_keras=not args.skip_tf)
    SERVER_LOG.write_bytes(b"")
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"engine and server on cores {sorted(os.sched_getaffinity(0))}, client on "
          f"{args.client_cores or 'the same cores'}")
    cpu_ms: dict[str, float] = {}
    inproc = bench_inprocess(1.0 if args.quick else 2.5, cpu_ms)
    best_way = max(inproc, key=lambda b: inproc[b])
    print("in-process ONNX Runtime, img/s (runs x threads, batch): "
          + ", ".join(f"{b}={v:.1f}" for b, v in inproc.items()), flush=True)
    results: dict[str, Any] = {"inprocess": inproc, "inprocess_cpu_ms": cpu_ms, "inprocess_best": inproc[best_way],
                               "inprocess_best_way": best_way, "load_before": load, "batched": {}, "unbatched": {},
                               "flags": {}}
    runs = [("batched", [*BATCHED_FLAGS, *args.batched_arg, *args.server_arg])]
    if not args.skip_unbatched:
        runs.append(("unbatched", ["--max-batch", "1", *args.server_arg]))
    for label, flags in runs:
        results["flags"][label] = flags
        port = free_port()
        proc = start_server(port, flags)
        try:
            results.setdefault("answer_bytes", answer_bytes(port))
            for c in levels:
                r = run_load(proc, port, c, seconds, warmup)
                results[label][c] = r
                print(f"  {label:<9} c={c:<3} {r['throughput']:7.1f} img/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  mean batch {r['mean_batch']:5.1f}  errors {r['errors']}  "
                      f"cpu/img {r['server_cpu_ms']:.3f}+{r['client_cpu_ms']:.3f} ms", flush=True)
            if label == "batched" and 1 in levels and args.paired_rounds:
                results["paired_idle"] = pairs = paired_idle(proc, port, args.paired_rounds,
                                                             1.0 if args.quick else 2.0)
                print("  paired one-connection windows (in-process b1 p50 -> served p50, ms): "
                      + ", ".join(f"{a:.3f} -> {b:.3f}" for a, b in pairs), flush=True)
            if label == "batched" and TARGET_CONCURRENCY in levels and args.paired_rounds:
                results["paired_load"] = pairs = paired_load(proc, port, best_way, TARGET_CONCURRENCY,
                                                             args.paired_rounds, seconds)
                print(f"  paired windows at {TARGET_CONCURRENCY} (in-process {best_way} -> served, img/s): "
                      + ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in pairs), flush=True)
        finally:
            stop_server(proc)
    if args.floor:
        results["floor"] = {}
        port = free_port()
        proc = start_floor(port, results["answer_bytes"])
        try:
            for c in levels:
                r = results["floor"][c] = run_load(proc, port, c, seconds, warmup, batches=False)
                print(f"  floor     c={c:<3} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:7.3f} ms  "
                      f"cpu/req {r['server_cpu_ms']:.3f}+{r['client_cpu_ms']:.3f} ms", flush=True)
        finally:
            stop_server(proc)
    # The machine may be shared: measure the in-process best again, so a drift in background load shows.
    again: dict[str, float] = {}
    results["inprocess_after"] = bench_inprocess(1.0 if args.quick else 2.5, again)
    if not args.skip_tf and MODEL == "mobilenet":
        results["tf_predict"] = bench_tf_predict(3.0 if args.quick else 6.0)
    results["load_after"] = os.getloadavg()
    report(results, levels)
    (WORK / f"serve-{MODEL}-results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


def cpu_budget(cores: int, best: float, ratio: float, model_ms: float, client_ms: float) -> tuple[float, float]:
    """(CPU ms per request that every process on ``cores`` shared cores may spend for ``ratio`` x the
    in-process best of ``best`` img/s, what is left of it for the server once the model's ``model_ms`` per
    image and the client's ``client_ms`` per request are paid)."""
    budget = cores * 1000.0 / (ratio * best)
    return budget, budget - model_ms - client_ms


def budget_line(results: dict[str, Any], concurrency: int) -> str:
    """What the throughput target leaves the server per request on these cores, beside what it spent: the
    light model's 0.5 x is bounded by the model's and the client's own CPU when all share two cores."""
    best, way = results["inprocess_best"], results["inprocess_best_way"]
    model = results["inprocess_cpu_ms"][way]
    r = results["batched"][concurrency]
    apart = bool(CLIENT_TASKSET)  # the client on cores of its own: its CPU is not the server's to share
    client = 0.0 if apart else r["client_cpu_ms"]
    cores = len(os.sched_getaffinity(0))
    budget, left = cpu_budget(cores, best, TARGET_RATIO, model, client)
    floor = results.get("floor", {}).get(concurrency)
    return (f"CPU budget at {TARGET_RATIO} x on {cores} cores: {budget:.3f} ms per request for every process; the "
            f"model takes {model:.3f} (in-process best)"
            + (" (the client on cores of its own)" if apart else f" and the client {client:.3f} (at {concurrency})")
            + f", which leaves {left:+.3f} ms for the server; it spent {r['server_cpu_ms'] - model:.3f} beyond the "
              f"model's in-process best (its batches here run the model less well: mean batch {r['mean_batch']:.1f})"
            + (f"; a server with no logic spent {floor['server_cpu_ms']:.3f}" if floor else ""))


def report(results: dict[str, Any], levels: list[int]) -> None:
    best, way = results["inprocess_best"], results["inprocess_best_way"]
    after = max(results["inprocess_after"].values())
    best_cpu = results["inprocess_cpu_ms"][way]
    b1 = results["inprocess_cpu_ms"]["b1_p50_ms"]
    print(f"\n{MODEL} {'x'.join(map(str, SHAPE))} fp32, ONNX Runtime CPU, {os.cpu_count()} cores "
          f"(load average {results['load_before'][0]:.2f} before, {results['load_after'][0]:.2f} after)")
    print(f"in-process best: {best:.1f} img/s ({way}; no server); {after:.1f} img/s measured again after the "
          f"server runs; {best_cpu:.2f} CPU ms per image; batch-1 latency p50 {b1:.3f} ms "
          f"({results['inprocess_cpu_ms']['b1_threads']:.0f} thread(s): the better of 1 and every core)")
    if "tf_predict" in results:
        tf = results["tf_predict"]
        print(f"TF model.predict per request: {tf['throughput']:.1f} img/s, p50 {tf['p50_ms']:.1f} ms, "
              f"p99 {tf['p99_ms']:.1f} ms")
    for label, flags in results["flags"].items():
        print(f"server flags, {label}: {' '.join(flags)}")
    print(f"\n{'run':<9} {'conc':>4} | {'img/s':>9} {'/best':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>7} "
          f"{'batch':>5} {'cpu/img ms':>10} {'errors':>6}")
    for label in results["flags"]:
        for c in levels:
            r = results[label][c]
            print(f"{label:<9} {c:>4} | {r['throughput']:>9.1f} {r['throughput'] / best:>6.0%} {r['p50_ms']:>8.3f} "
                  f"{r['p99_ms']:>8.3f} {r['p99_ms'] / r['p50_ms']:>7.2f} {r['mean_batch']:>5.1f} "
                  f"{r['server_cpu_ms'] + r['client_cpu_ms']:>10.2f} {r['errors']:>6}")
    print(f"(cpu/img: CPU ms per image of the server's processes + the client process, vs {best_cpu:.2f} "
          "for the in-process best)")
    batched = results["batched"]
    if TARGET_CONCURRENCY in batched:
        r = batched[TARGET_CONCURRENCY]
        ratio, tail = r["throughput"] / best, r["p99_ms"] / r["p50_ms"]
        ok = "met" if ratio >= TARGET_RATIO and tail <= TARGET_TAIL else "NOT met"
        print(f"\ntarget at concurrency {TARGET_CONCURRENCY}: {ratio:.2f} x in-process best (>= {TARGET_RATIO}), "
              f"p99/p50 {tail:.2f} (<= {TARGET_TAIL}): {ok}")
    floor = results.get("floor", {})
    if TARGET_CONCURRENCY in floor:
        f = floor[TARGET_CONCURRENCY]["throughput"]
        print(f"floor at concurrency {TARGET_CONCURRENCY} (the same client, a server with no logic): {f:.1f} req/s "
              f"= {f / best:.2f} x in-process best; the server reached {batched[TARGET_CONCURRENCY]['throughput'] / f:.2f}"
              f" x the floor" if TARGET_CONCURRENCY in batched else "")
    if TARGET_CONCURRENCY in batched:
        print(budget_line(results, TARGET_CONCURRENCY))
    if 1 in batched:
        over = batched[1]["p50_ms"] - b1
        ok = "met" if over <= TARGET_IDLE_MS else "NOT met"
        print(f"target at concurrency 1: p50 {batched[1]['p50_ms']:.3f} ms = in-process batch 1 {over:+.3f} ms "
              f"(<= +{TARGET_IDLE_MS} ms): {ok}"
              + (f"; the floor's p50 alone is {floor[1]['p50_ms']:.3f} ms" if 1 in floor else ""))
    if results.get("paired_load"):
        ratios = sorted(b / a for a, b in results["paired_load"])
        ratio = ratios[len(ratios) // 2]
        ok = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"target at concurrency {TARGET_CONCURRENCY}, paired windows: {ratio:.2f} x in-process best (median of "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; >= {TARGET_RATIO}): {ok}")
    if results.get("paired_idle"):
        adds = sorted(b - a for a, b in results["paired_idle"])
        over = adds[len(adds) // 2]
        ok = "met" if over <= TARGET_IDLE_MS else "NOT met"
        print(f"target at concurrency 1, paired windows: the server adds {over:+.3f} ms (median of "
              f"{', '.join(f'{d:+.3f}' for d in adds)}; <= +{TARGET_IDLE_MS} ms): {ok}")
    if "tf_predict" in results and 32 in batched:
        print(f"vs TF model.predict per request at concurrency 32: "
              f"{batched[32]['throughput'] / results['tf_predict']['throughput']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
