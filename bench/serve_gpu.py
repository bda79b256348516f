"""GPU benchmark of ``trtop serve`` with Triton's ``perf_analyzer`` as the client (run on a GPU host).

    PYTHONPATH=/tmp/site:$PWD/operator python3 bench/serve_gpu.py --out /tmp/out \\
        --perf-analyzer /tmp/pa/perf_analyzer/bin/perf_analyzer

ONNX Runtime's CUDA provider stands in for TensorRT (which cannot be installed there);
the server code in front of it is the same. In one run it measures:

- the engine alone: ResNet-50 fp32 (torchvision, random weights) in-process at each batch
  bucket (1..32, numpy in and out, as the server feeds it), and its batch-1 latency;
- ``trtop serve`` (default settings: front-end processes, warmed buckets) under
  ``perf_analyzer`` over HTTP at concurrency 1..128: throughput, p50/p99 and whether the
  window was stable, with the GPU's utilisation and the server's CPU cores during it;
- the request ceiling of the server on a tiny model (16x16 MatMul), over HTTP and gRPC.

Clients: ``perf_analyzer`` copies every request's input into its per-request records
(``InferContext::GetInputs``), ~2 GB per second of ResNet-50 load; in the second session it
grew to 127 GB and was OOM-killed at 64-128 clients, in the fourth it reached 25 GB at 16
clients and died of ``std::bad_alloc`` under the 32 GB cap from 16-32 clients up. So its
address space is capped (``--pa-memory-gb``: it then fails alone, with its peak RSS in the
table), ``--pa-count N`` bounds each window to N requests (``--pa-count-from C``: only from
concurrency C up), and ``--client own`` (or ``both``) drives the same load with
``loadclient.py`` (processes on raw sockets): the ResNet-50 figures past 16 clients come from
it. ``--client-cores``/``--server-cores`` pin client and server apart with taskset (the
server's default front-end count follows). perf_analyzer's gRPC client shares one HTTP/2
connection among up to 6 requests in flight (tritonclient's channel cache;
``TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT`` in the environment changes it) and the kernel
spreads connections, not requests, over the front-ends; each row has the cores each server
process and the client kept busy. ``--py-spy PATH --profile-at 1,64`` records the
engine process and one front-end with py-spy during those load points (raw collapsed stacks
in ``--out``).

The lone request (``--paired-rounds N``, default 3): after each ResNet-50 sweep, N pairs of windows,
the engine alone at batch 1 (in this process: plain ``session.run`` and the server's engine path in
alternating quarters, the better p50) then the served one-client p50 (the same client, one connection).
A single one-client window against a baseline taken minutes earlier (or on another machine) is a
draw: under one server the one-client p50 moved up to 0.2 ms between 2 s windows seconds apart, the
engine alone 0.03-0.08 ms (docs/server-measured.md, fourteenth session). A pair's two figures share the
machine's state, and the pairs' median difference is what the server adds; the one-client row
against the early baseline is printed beside it.

The platform's floor (``--floor-seconds``, default 4; 0: none): after the ResNet-50 runs, one
``loadclient`` connection against ``transport_floor.py``'s server with no logic, which spins the
engine's batch-1 p50 before each answer, on the server's and the client's cores: what moving 602 KB in
and the answer out, and the waits of both sides, add to a lone request before any server does anything.

A configuration whose flags turn system shared memory on (``--config shm=--shared-memory=system``) is
driven the way a client in the server's pod would drive it: both clients put the tensors in ``/dev/shm``
regions and send requests that name them (``perf_analyzer --shared-memory system``, ``loadclient.py
--shared-memory``), so no tensor byte crosses a socket.

Prints the tables (markdown) and writes them with the raw figures to ``--out``.
Targets (issue P8): >= 0.85 x the in-process best at the best concurrency, stable
windows everywhere, p99 <= 2.5 x p50; a lone request's p50 <= the engine's batch-1 p50 + 0.3 ms;
tiny model >= 20,000 req/s over HTTP and gRPC.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import models  # noqa: E402
from configs import parse_config, server_env  # noqa: E402
from ready import wait_ready  # noqa: E402
from trtop.serve.awake import SPINNER_NAME  # noqa: E402

DEVICE = "9.0/NVIDIA-H200"
CLIENT_TIMEOUT_S = 120.0  # a perf_analyzer run still going then is stuck (--client-timeout)
PA_MAX_TRIALS = 6  # perf_analyzer's windows per point before it gives up on three stable ones in a row
PA_START_S = 10.0  # its start and warm-up, over its windows, before a run counts as stuck
BUCKETS = (1, 2, 4, 8, 16, 32)
TARGET_RATIO, TARGET_TAIL, TARGET_TINY = 0.85, 2.5, 20000.0
TARGET_LONE_MS = 0.3  # a lone request over the engine's batch-1 p50
# The floor's fixed answer: about ResNet-50's (1,000 fp32 as a binary tensor after its JSON header)
RESNET_ANSWER_BYTES = 4200


def inprocess(path: Path, seconds: float, engine_path: bool = False) -> dict[str, Any]:
    """img/s of ONNX Runtime CUDA alone at each bucket, batch-1 p50. ``engine_path``: the way the server
    runs it (a session per bucket with bound GPU buffers / CUDA graphs, inputs in page-locked memory);
    else plain ``session.run`` on numpy arrays with the server's session options."""
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
    from trtop.serve.runtime import RuntimeOptions

    rt = OnnxRuntime(path, RuntimeOptions(threads=1, use_gpu=True))
    if engine_path:
        rt.prepare(BUCKETS)
    name, out = rt.inputs[0].name, [rt.outputs[0].name]
    shape = rt.inputs[0].shape[1:]
    result: dict[str, Any] = {"throughput": {}}
    for b in BUCKETS:
        x = np.random.rand(b, *shape).astype(np.float32)
        if engine_path:
            pinned = rt.batch_array(x.shape, x.dtype)
            pinned[...] = x
            x = pinned
        for _ in range(5):
            rt.run({name: x}, out)
        n, lat, stop = 0, [], time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t = time.perf_counter()
            rt.run({name: x}, out)
            lat.append(time.perf_counter() - t)
            n += b
        result["throughput"][b] = n / sum(lat)
        if b == 1:
            result["b1_p50_ms"] = float(np.percentile(np.array(lat) * 1000, 50))
    rt.close()
    result["best"] = max(result["throughput"].values())
    result["best_batch"] = max(result["throughput"], key=lambda k: result["throughput"][k])
    return result


class LoneEngine:
    """ResNet-50 at batch 1 in this process, both ways the baseline is measured (plain ``session.run`` on a
    numpy array, and the server's engine path: a bound batch-1 session, CUDA graph, page-locked input), kept
    open while servers run so that windows of it alternate with served windows."""

    def __init__(self, path: Path) -> None:
        from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
        from trtop.serve.runtime import RuntimeOptions

        self.plain = OnnxRuntime(path, RuntimeOptions(threads=1, use_gpu=True))
        self.engine = OnnxRuntime(path, RuntimeOptions(threads=1, use_gpu=True))
        self.engine.prepare([1])
        x = np.random.rand(1, *self.plain.inputs[0].shape[1:]).astype(np.float32)
        pinned = self.engine.batch_array(x.shape, x.dtype)
        pinned[...] = x
        self._ways = [(self.plain, x), (self.engine, pinned)]
        for rt, arr in self._ways:
            for _ in range(10):
                self._run(rt, arr)

    @staticmethod
    def _run(rt: Any, x: Any) -> None:
        rt.run({rt.inputs[0].name: x}, [rt.outputs[0].name])

    def b1_p50_ms(self, seconds: float) -> float:
        """The better of the two ways' batch-1 p50, each timed in two alternating quarters of ``seconds``."""
        lat: list[list[float]] = [[], []]
        for _ in range(2):
            for i, (rt, x) in enumerate(self._ways):
                stop = time.perf_counter() + seconds / 4
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    self._run(rt, x)
                    lat[i].append(time.perf_counter() - t)
        return min(float(np.percentile(np.array(v) * 1000, 50)) for v in lat)

    def close(self) -> None:
        self.plain.close()
        self.engine.close()


def served_lone_p50_ms(client: Client, url: str, window_ms: int, tmp: Path) -> float:
    """One client's ResNet-50 p50 over one window (ms; nan when the window failed)."""
    if client.kind == "perf_analyzer":
        return float(_perf_analyzer(client, "resnet50", url, "http", 1, window_ms, tmp).get("p50_ms", float("nan")))
    import loadclient

    host, port = url.split(":")
    return float(loadclient.run(host=host, port=int(port), model="resnet50", input_name="input", shape=[3, 224, 224],
                                concurrency=1, seconds=window_ms / 1000, warmup=0.3, procs=1,
                                cores=client.cores, shared_memory=client.shared_memory)["p50_ms"])


def paired_lone(engine: LoneEngine, client: Client, url: str, rounds: int, window_ms: int,
                tmp: Path) -> list[tuple[float, float]]:
    """(the engine's batch-1 p50 alone, the served one-client p50) in alternating windows, ms."""
    pairs = []
    for _ in range(rounds):
        alone = engine.b1_p50_ms(window_ms / 1000)
        pairs.append((alone, served_lone_p50_ms(client, url, window_ms, tmp)))
        print(f"  paired: engine alone {pairs[-1][0]:.3f} ms, served {pairs[-1][1]:.3f} ms", flush=True)
    return pairs


class Server:
    def __init__(self, model: Path, name: str, port: int, grpc_port: int, extra: list[str], log: Path,
                 cores: str = "", stages: Path | None = None, env: dict[str, str] | None = None) -> None:
        env = server_env({**os.environ, "TRTOP_DEVICE": DEVICE, **(env or {})})  # env: more variables, or others
        flags = ["--model", str(model), "--model-name", name, "--host", "127.0.0.1", "--port", str(port),
                 "--grpc-port", str(grpc_port), "--log-level", "warning", *extra]
        cmd = [sys.executable, "-m", "trtop.cli", "serve", *flags]
        if stages is not None:  # time stamps per stage of each request (one process), medians into that file
            cmd = [sys.executable, str(ROOT / "bench" / "stages.py"), "--report", "1000", "--out", str(stages), "--",
                   *flags]
        if cores:  # its front-end count follows (the default counts the cores it may use)
            cmd = ["taskset", "-c", cores, *cmd]
        self.log = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(self.proc, self.url, 300, lambda: log.read_text()[-3000:], poll_s=0.3)

    def pids(self) -> list[int]:
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            kids = []
        # The server's processes: engine first, then its front-ends (not the spinners of --keep-awake: their busy
        # loops give way to any work and would count as the server's CPU).
        return [self.proc.pid, *(int(k) for k in kids if not _spinner(int(k)))]

    def dump_state(self) -> str:
        """Every process's state and stacks into the server's log (SIGUSR1: ``Supervisor.dump_state``), for a
        client that does not finish; the server keeps serving. Returns whether inferences were still being
        answered meanwhile (the successes counted in /metrics before and after the dump's 2 s), which tells a
        stalled inference path from a client waiting on something else."""
        if self.proc.poll() is not None:
            return "the server had exited"
        before = successes(self.url)
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(2)  # the dumps are written meanwhile
        after = successes(self.url)
        if isinstance(before, str) or isinstance(after, str):
            return f"/metrics did not answer ({before if isinstance(before, str) else after})"
        return f"inferences answered in the 2 s of the dump: {after - before:.0f}"

    def frontend_state(self) -> list[str]:
        """What the native front-ends' SIGUSR1 state lines say of the rules that served: each bound (e.g. ``bound
        13, small requests 3``, or ``..: none for this model``) and Go threads (``Go threads 2 (2 while gRPC calls
        overlap, raised 7 times)``), each different one once; [] with Python front-ends."""
        if self.proc.poll() is not None:
            return []
        start = Path(self.log.name).stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(1)  # the front-ends write their dumps meanwhile
        with open(self.log.name, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        return sorted({f"bound {b}" for b in _BOUND.findall(text)}) + sorted(set(_THREADS.findall(text)))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _spinner(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(SPINNER_NAME.encode())
    except OSError:
        return False


def _stat_seconds(stat: Path) -> float:
    """User + system CPU seconds from a /proc .../stat file (0 when it is gone)."""
    try:
        f = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    return sum(_stat_seconds(Path(f"/proc/{p}/stat")) for p in pids)


def thread_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    return {int(t.name): _stat_seconds(t / "stat") for t in tasks}


class GpuSampler:
    """The GPU's utilisation, sampled every 0.5 s while a window runs: through NVML in this process when
    ``nvidia-ml-py`` is importable (one call on a handle kept open), else by running ``nvidia-smi``, a process
    that sets NVML up again for every sample (tens of ms of CPU on any core, beside the server it measures)."""

    _nvml: Any = None  # (module, handle) once opened; False when NVML is not to be had here

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def _open_nvml(cls) -> Any:
        if cls._nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                cls._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
            except Exception:  # not installed, no driver, no GPU: nvidia-smi's way
                cls._nvml = False
        return cls._nvml

    def _sample(self) -> float:
        nvml = self._open_nvml()
        if nvml:
            module, handle = nvml
            return float(module.nvmlDeviceGetUtilizationRates(handle).gpu)
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        return float(out.splitlines()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._sample())
            except Exception:  # noqa: BLE001 - a missing sample leaves the mean to the others
                pass
            self._stop.wait(0.5)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return float(np.mean(self.samples)) if self.samples else float("nan")


SHORT_BATCH_ROWS = 8  # a batch of at most this many rows is short (a bucket of the batch size histogram)


def scrape(url: str) -> dict[str, float]:
    """The server's batch size, queue and compute histograms from /metrics (``histograms``)."""
    return histograms(urllib.request.urlopen(url + "/metrics", timeout=10).read().decode())


def histograms(text: str) -> dict[str, float]:
    """Sums and counts of the batch size, queue and compute histograms in a /metrics text, and the batches of at
    most ``SHORT_BATCH_ROWS`` rows (``batch_size_short``): under load they say requests were held elsewhere while
    the engine's queue ran out."""
    out = {}
    for k in ("batch_size", "queue_seconds", "compute_seconds"):
        for suffix in ("sum", "count"):
            m = re.search(rf"^trtop_inference_{k}_{suffix}\{{[^}}]*\}} (\S+)$", text, re.M)
            if m:
                out[f"{k}_{suffix}"] = float(m.group(1))
    m = re.search(rf'^trtop_inference_batch_size_bucket\{{[^}}]*le="{SHORT_BATCH_ROWS:.1f}"[^}}]*\}} (\S+)$', text, re.M)
    if m:
        out["batch_size_short"] = float(m.group(1))
    return out


def mean_batch(d: dict[str, float]) -> float:
    """The mean rows per batch in a histogram delta (nan: none ran)."""
    count = d.get("batch_size_count", 0.0)
    return d.get("batch_size_sum", 0.0) / count if count else float("nan")


def short_share(d: dict[str, float]) -> float:
    """The share of batches of at most ``SHORT_BATCH_ROWS`` rows in a histogram delta (nan: none ran)."""
    count = d.get("batch_size_count", 0.0)
    return d.get("batch_size_short", 0.0) / count if count else float("nan")


def successes(url: str) -> float | str:
    """The server's successful inferences so far (/metrics), or why they could not be read."""
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    except OSError as exc:
        return str(exc)
    m = re.search(r'^trtop_inference_requests_total\{[^}]*outcome="success"[^}]*\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else "no success counter"


def client_snapshot(pid: int) -> str:
    """What a stuck client waits on: each thread's state, kernel wait channel and system call (a socket's
    descriptor is its first argument), and the TCP sockets' unread and unsent bytes with their ports (ss). A
    client whose main thread waits on one connection (the statistics it asks for every window) while the others
    move is not stalled on the inference path."""
    lines = [f"client {pid}:"]
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda p: int(p.name)):
        def read(name: str) -> str:
            try:
                return (task / name).read_text().strip()
            except OSError:
                return "?"
        state = read("stat").rsplit(")", 1)[-1].split()[:1]
        lines.append(f"  thread {task.name} {read('comm')}: state {''.join(state)}, wchan {read('wchan')}, "
                     f"syscall {read('syscall')}")
    fds = []
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            fds.append(f"{fd.name}->{os.readlink(fd)}")
        except OSError:
            pass
    lines.append("  descriptors: " + " ".join(sorted(fds, key=lambda f: int(f.split("-")[0]))))
    try:
        ss = subprocess.run(["ss", "-tnpi"], capture_output=True, text=True, timeout=10).stdout
        lines += ["  " + line for line in ss.splitlines() if f"pid={pid}," in line]
    except (OSError, subprocess.TimeoutExpired) as exc:
        lines.append(f"  ss: {exc}")
    return "\n".join(lines) + "\n"


class Client:
    """How the load is driven: ``perf_analyzer`` (pinned to ``cores`` with taskset, its address space capped
    at ``memory_gb`` so that it fails alone instead of the host's OOM killer taking it, bounded windows with
    ``count`` from concurrency ``count_from`` up), or ``loadclient`` (``own``: processes on raw sockets,
    HTTP only)."""

    def __init__(self, pa: str, kind: str, cores: str, memory_gb: float, count: int, procs: int,
                 count_from: int = 0, shared_memory: bool = False, timeout_s: float = CLIENT_TIMEOUT_S) -> None:
        self.pa, self.kind, self.cores, self.memory_gb, self.count, self.procs = pa, kind, cores, memory_gb, count, procs
        self.count_from = count_from
        self.timeout_s = timeout_s  # perf_analyzer still running then: the server's state is dumped, the client killed
        self.shared_memory = shared_memory  # tensors in system shared memory regions (the server runs with it on)


class Profiler:
    """py-spy recordings (``--threads``, raw collapsed stacks, ``--nonblocking``) of the engine process and
    one front-end while chosen load points run: where each process's CPU goes under that load."""

    def __init__(self, py_spy: str, at: set[int], seconds: float, out: Path, native: bool = False) -> None:
        self.py_spy, self.at, self.seconds, self.out = py_spy, at, seconds, out
        self.native = native  # C frames too (grpc's Cython core, uvloop, ONNX Runtime)

    def start(self, pids: list[int], tag: str, concurrency: int) -> list[subprocess.Popen[bytes]]:
        if not self.py_spy or concurrency not in self.at:
            return []
        procs = []
        for role, pid in (("engine", pids[0]), ("frontend", pids[1] if len(pids) > 1 else 0)):
            if not pid:
                continue
            path = self.out / f"pyspy-{tag}-c{concurrency}-{role}.txt"
            procs.append(subprocess.Popen(
                [self.py_spy, "record", "--pid", str(pid), "--duration", str(int(self.seconds)), "--rate", "250",
                 "--threads", "--format", "raw", "--output", str(path),
                 *(["--native"] if self.native else ["--nonblocking"])],  # --native pauses the process to read C stacks
                stdout=subprocess.DEVNULL, stderr=open(str(path) + ".log", "wb")))  # noqa: SIM115
        return procs

    @staticmethod
    def wait(procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _cap_memory(gb: float) -> Any:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2**30), int(gb * 2**30)))
    return limit if gb > 0 else None


def core_count(cores: str) -> int:
    """How many cores a taskset list names ("12-15" -> 4, "0,2,4-5" -> 4); 0 for none (the whole host)."""
    count = 0
    for part in filter(None, cores.split(",")):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def client_saturated(busy: float, cores: str) -> str:
    """What a killed client's CPU says: ``perf_analyzer``'s HTTP client (a thread per request in flight) that
    keeps every core it has busy leaves its main thread, which closes the windows, too little time to close
    one, while the server goes on answering (H100 host, tiny model at 256 in flight with --group-limit 3: the
    server answered ~40,000-49,000 requests a second while the client held 4 of 4 and then 8 of 8 cores and
    closed no window; docs/server-measured.md, twenty-eighth session)."""
    given = core_count(cores) or os.cpu_count() or 1
    if busy < 0.9 * given:
        return f"; the client kept {busy:g} of its {given} cores busy"
    return (f"; the client kept {busy:g} of its {given} cores busy: at its cores' limit, so a window it never "
            f"closed says nothing of the server (give it more cores, or measure with fewer in flight)")


def _peak_rss_gb(proc: subprocess.Popen[str], peak: list[float]) -> None:
    """peak[0]: the client's peak RSS (GB); peak[1]: its CPU seconds, as last read; peak[2]: when first read."""
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 2**20)
            peak[1] = cpu_seconds([proc.pid])
            if not peak[2]:
                peak[2] = time.monotonic()
            peak[3] = time.monotonic()
        except OSError:
            pass
        time.sleep(0.25)


def perf(client: Client, model: str, url: str, protocol: str, concurrency: int, window_ms: int,
         server: Server, tmp: Path, shape: list[int] | None = None, input_name: str = "",
         profiler: Profiler | None = None, label: str = "") -> dict[str, Any]:
    """One load point: the client's figures plus the server's (batches, queue, cores) and the GPU's."""
    sampler = GpuSampler()
    m0 = scrape(server.url)
    pids = server.pids()
    each0 = [cpu_seconds([p]) for p in pids]  # per process: is the load spread over the front-ends?
    threads0 = thread_seconds(pids[0])  # the engine's busiest thread: its event loop, the tiny model's limit
    cpu0, t0 = cpu_seconds(server.pids()), time.monotonic()
    spies = profiler.start(server.pids(), f"{model}{label and '-' + label}-{protocol}-{client.kind}",
                                              concurrency) if profiler else []
    row: dict[str, Any] = {"concurrency": concurrency, "client": client.kind}
    if client.kind == "own":
        import loadclient

        host, port = url.split(":")
        got = loadclient.run(host=host, port=int(port), model=model, input_name=input_name, shape=shape or [],
                             concurrency=concurrency, seconds=window_ms / 1000 * 3, procs=client.procs,
                             cores=client.cores, shared_memory=client.shared_memory)
        row.update(got, stable=got["errors"] == 0, rc=0)
    else:
        row.update(_perf_analyzer(client, model, url, protocol, concurrency, window_ms, tmp, server.dump_state))
    cores = (cpu_seconds(server.pids()) - cpu0) / (time.monotonic() - t0)
    row["cores_by_process"] = [round((cpu_seconds([p]) - c) / (time.monotonic() - t0), 2)  # engine first
                               for p, c in zip(pids, each0, strict=True)]
    threads1 = thread_seconds(pids[0])
    row["engine_top_thread"] = round(max((v - threads0.get(t, 0.0) for t, v in threads1.items()), default=0.0)
                                     / (time.monotonic() - t0), 2)
    Profiler.wait(spies)
    gpu = sampler.stop()
    try:
        m1 = scrape(server.url)
    except OSError as exc:  # the server went away during the window: keep what the client saw, say so
        row.update(gpu_util=gpu, server_cores=cores, mean_batch=float("nan"), short_batches=float("nan"),
                   batch_ms=float("nan"),
                   queue_ms=float("nan"), stable=False, error=f"the server stopped answering: {exc}")
        return row
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
    row.update(gpu_util=gpu, server_cores=cores,
               mean_batch=mean_batch(d), short_batches=short_share(d),
               batch_ms=1000 * d.get("compute_seconds_sum", 0.0) / max(1.0, d.get("compute_seconds_count", 0.0)),
               queue_ms=1000 * d.get("queue_seconds_sum", 0.0) / max(1.0, d.get("queue_seconds_count", 0.0)))
    return row


_PASS = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec")


def windows_of(text: str) -> list[float]:
    """Each measurement window's throughput in ``perf_analyzer -v``'s output, in order: what a run that found no
    three stable windows in a row still measured (the twenty-ninth session's gRPC run said nothing more)."""
    return [float(v) for v in _PASS.findall(text)]


def failure_of(row: dict[str, Any]) -> str:
    """A failed point in a few words: the windows it saw when it saw some, else the end of the client's output."""
    windows = row.get("windows") or []
    seen = " / ".join(f"{w:,.0f}" for w in windows)
    if windows and not row.get("killed"):
        return f"no 3 stable windows in {len(windows)}: {seen}"
    if row.get("killed"):  # the client's own output would only repeat its settings
        head = str(row.get("error", "")).split(":", 1)[0]
        busy = row.get("client_cores")
        return (f"{head}, killed{f' (the client kept {busy:.2f} cores busy)' if busy else ''}; "
                f"windows seen: {seen or 'none'}")
    return repr(row.get("error", "")[-200:])


def _perf_analyzer(client: Client, model: str, url: str, protocol: str, concurrency: int, window_ms: int,
                   tmp: Path, on_stuck: Callable[[], str] | None = None) -> dict[str, Any]:
    csv_path = tmp / f"pa-{model}-{protocol}-{concurrency}.csv"
    csv_path.unlink(missing_ok=True)  # another configuration's window must not be read as this one's
    cmd = [client.pa, "-m", model, "-u", url, "-i", protocol, "--concurrency-range", f"{concurrency}:{concurrency}",
           "--stability-percentage", "10", "--max-trials", str(PA_MAX_TRIALS), "-f", str(csv_path), "-v"]
    # Windows of N requests: the requests (and the inputs perf_analyzer copies) per window are bounded.
    count_windows = client.count > 0 and concurrency >= client.count_from
    if count_windows:
        cmd += ["--measurement-mode", "count_windows", "--measurement-request-count", str(client.count)]
    else:
        cmd += ["--measurement-interval", str(window_ms)]
    if client.shared_memory:
        cmd += ["--shared-memory", "system"]
    if client.cores:
        cmd = ["taskset", "-c", client.cores, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_cap_memory(client.memory_gb))
    peak = [0.0, 0.0, 0.0, 0.0]
    watcher = threading.Thread(target=_peak_rss_gb, args=(proc, peak), daemon=True)
    watcher.start()
    stuck = False
    timeout_s = client.timeout_s
    if not count_windows:
        # A healthy client may take every trial's window: a shorter limit would kill it as stuck (the thirtieth
        # session's first run, --client-timeout 20 against 6 windows of 4 s).
        timeout_s = max(timeout_s, PA_MAX_TRIALS * window_ms / 1000 + PA_START_S)
    try:
        text, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:  # a client that never finishes: some requests never came back
        stuck = True
        seen = client_snapshot(proc.pid)  # a .log: bench/gpu/run.sh brings the folder's logs back
        progress = on_stuck() if on_stuck is not None else ""
        (tmp / f"client-stuck-{model}-{protocol}-{concurrency}.log").write_text(f"{progress}\n{seen}")
        proc.kill()
        text, _ = proc.communicate()
    watcher.join()
    busy = round(peak[1] / max(1e-3, peak[3] - peak[2]), 2)  # cores the client kept busy (its start-up included)
    if stuck:
        text = (f"perf_analyzer still running after {timeout_s:g}s: killed"
                f"{' (the server state dumped to its log first; ' + progress + ')' if on_stuck else ''}"
                f"{client_saturated(busy, client.cores)}\n{text}")
    stable = "Failed to obtain stable measurement" not in text and proc.returncode == 0
    row: dict[str, Any] = {"stable": stable, "rc": proc.returncode, "client_peak_rss_gb": round(peak[0], 2),
                           "client_cores": busy, "windows": windows_of(text), "killed": stuck}
    if csv_path.exists():
        rows = list(csv.DictReader(csv_path.open()))
        if rows:
            r = rows[0]
            row.update(throughput=float(r["Inferences/Second"]), p50_ms=float(r["p50 latency"]) / 1000,
                       p99_ms=float(r["p99 latency"]) / 1000)
    if "throughput" not in row or proc.returncode != 0 or stuck:
        row["error"] = text[-1500:]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-out"))
    ap.add_argument("--perf-analyzer", default="/tmp/pa/perf_analyzer/bin/perf_analyzer")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--window-ms", type=int, default=3000)
    ap.add_argument("--server-arg", action="append", default=[], help="a server flag for every run (repeatable)")
    ap.add_argument("--config", action="append", default=[],
                    help="NAME=FLAGS: also serve ResNet-50 and the tiny model with these extra flags (repeatable), e.g. "
                         "i2=--instances=2; "
                         "leading VAR=value words go into the server's environment (e.g. old=PYTHONPATH=/x/operator: "
                         "another tree of the server, measured on the same machine)")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--tiny-concurrency", default="64,128,256")
    ap.add_argument("--tiny-protocols", default="http,grpc", help="the tiny model's protocols, in this order")
    # Longer than ResNet-50's: at 256 in flight over gRPC, 2 s windows found no stable three in six on the H100
    # host while 3 s and 4 s windows did (docs/server-measured.md, twenty-eighth session).
    ap.add_argument("--tiny-window-ms", type=int, default=4000, help="the tiny model's perf_analyzer windows")
    ap.add_argument("--skip-inprocess", action="store_true", help="use --baseline instead of measuring it")
    ap.add_argument("--baseline", default="5694,1.05", help="in-process best img/s,batch-1 p50 ms (--skip-inprocess)")
    ap.add_argument("--client", choices=("perf_analyzer", "own", "both"), default="perf_analyzer",
                    help="ResNet-50's client: perf_analyzer, bench/loadclient.py, or both at every point")
    ap.add_argument("--client-cores", default="", help="taskset -c list for the client (e.g. 12-15)")
    ap.add_argument("--server-cores", default="", help="taskset -c list for the server (e.g. 0-11)")
    # The tiny model's server used at most ~5 of its 12 cores while perf_analyzer's HTTP client reached the limit of
    # its 4 first (killed at 256 in flight, windows that did not settle at 128: thirty-first session): another split
    # for the tiny model alone measures the server's ceiling rather than the client's.
    ap.add_argument("--tiny-server-cores", default="", help="taskset -c list for the tiny model's server "
                    "(default: --server-cores)")
    ap.add_argument("--tiny-client-cores", default="", help="the same for its client (default: --client-cores)")
    ap.add_argument("--client-procs", type=int, default=4, help="processes of --client own")
    ap.add_argument("--client-timeout", type=float, default=CLIENT_TIMEOUT_S,
                    help="seconds a perf_analyzer run may take (at least its six windows and 10 s with time "
                         "windows); past them the server's state is dumped into its log (SIGUSR1), the client "
                         "killed and its row says so (the run goes on)")
    ap.add_argument("--pa-memory-gb", type=float, default=32, help="address-space cap of perf_analyzer (0: none)")
    ap.add_argument("--pa-count", type=int, default=0,
                    help="perf_analyzer windows of this many requests (count_windows) instead of --window-ms")
    ap.add_argument("--pa-count-from", type=int, default=0,
                    help="--pa-count only from this concurrency up (time windows below it)")
    ap.add_argument("--py-spy", default="", help="py-spy binary: record the engine and a front-end at --profile-at")
    ap.add_argument("--profile-at", default="", help="concurrency levels to profile (ResNet-50 and tiny)")
    ap.add_argument("--profile-s", type=float, default=6.0, help="seconds of each py-spy recording")
    ap.add_argument("--py-spy-native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--paired-rounds", type=int, default=3,
                    help="after each ResNet-50 sweep: this many pairs of windows, the engine alone at batch 1 then "
                         "one client served (what the server adds to a lone request, the drift cancelled); 0: none")
    ap.add_argument("--paired-window-ms", type=int, default=2000, help="each paired window's length")
    ap.add_argument("--floor-seconds", type=float, default=4.0,
                    help="after the ResNet-50 runs: one client for this long against a server with no logic that "
                         "spins the engine's batch-1 p50 before each answer (transport_floor.py), on the same cores: "
                         "what the platform adds to a lone request before any server does anything; 0: none")
    ap.add_argument("--client-awake", action="store_true",
                    help="keep the client's cores (--client-cores) awake with busy loops at the lowest priority, as "
                         "--keep-awake does the server's: the engine alone never sleeps between its runs, a client "
                         "does, and on a VM waking its halted core is part of what one client measures")
    ap.add_argument("--stages", action="store_true",
                    help="run the ResNet-50 servers under bench/stages.py (give --server-arg=--frontends=0): the "
                         "median time of each stage of a request, in the server log and stages-LABEL.jsonl")
    ap.add_argument("--report-from", type=Path, default=None,
                    help="print the report of an earlier run's serve-gpu.json (from --out) and stop: no GPU needed")
    args = ap.parse_args()
    if args.report_from is not None:
        report(reloaded(json.loads(args.report_from.read_text())))
        return 0
    if args.client_awake and not args.client_cores:
        ap.error("--client-awake needs --client-cores")
    spinners = client_spinners(args.client_cores) if args.client_awake else []
    try:
        return run(args)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def client_spinners(cores: str) -> list[subprocess.Popen[bytes]]:
    """A busy loop under SCHED_IDLE on each of ``cores`` (a taskset list): preempted at once by the client, it
    only keeps the core from halting between the client's requests (``trtop.serve.awake`` for the server)."""
    print(f"client's cores kept awake: {cores}", flush=True)
    return [subprocess.Popen(["taskset", "-c", str(core), "chrt", "--idle", "0", "sh", "-c", "while :; do :; done"])
            for core in cpu_list(cores)]


def cpu_list(spec: str) -> list[int]:
    """The cores of a taskset -c list such as 12-15 or 0,2,4-7."""
    cores: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cores.extend(range(int(first), int(last or first) + 1))
    return cores


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out
    results: dict[str, Any] = {"cores": os.cpu_count(), "server_args": args.server_arg,
                               "client_awake": args.client_awake}
    profiler = Profiler(args.py_spy, {int(c) for c in args.profile_at.split(",") if c}, args.profile_s, tmp,
                        args.py_spy_native)
    levels = [int(c) for c in args.concurrency.split(",")]
    parsed = [("default", {}, [])] + [parse_config(c) for c in args.config]
    configs_env = {label: env for label, env, _ in parsed}
    configs = [(label, flags) for label, _, flags in parsed]
    if not args.skip_resnet:
        resnet = models.resnet50()
        print("in-process ONNX Runtime CUDA (ResNet-50) ...", flush=True)
        if args.skip_inprocess:  # a baseline measured earlier on the same host: "best img/s,batch-1 p50 ms"
            best, b1 = (float(v) for v in args.baseline.split(","))
            plain: dict[str, Any] = {"best": best, "best_batch": 0, "b1_p50_ms": b1, "throughput": {1: 1000 / b1}}
            engine = plain
        else:
            plain = inprocess(resnet, 3.0)
            print(json.dumps(plain), flush=True)
            engine = inprocess(resnet, 3.0, engine_path=True)
            print(json.dumps(engine), flush=True)
        # The baseline is the better of the two: the server must not give away what its engine path gains.
        base = dict(engine if engine["best"] >= plain["best"] else plain)
        base["plain"], base["engine_path"] = plain, engine
        base["b1_p50_ms"] = min(plain["b1_p50_ms"], engine["b1_p50_ms"])
        results["inprocess"] = base
        results["resnet50_http"] = {}
        lone = LoneEngine(resnet) if args.paired_rounds > 0 else None
        for label, flags in configs:
            print(f"trtop serve ResNet-50, {label}: {flags}", flush=True)
            server = Server(resnet, "resnet50", 8000, 8001, ["--max-batch", "32", *args.server_arg, *flags],
                            tmp / f"server-resnet-{label}.log", args.server_cores,
                            stages=tmp / f"stages-{label}.jsonl" if args.stages else None, env=configs_env[label])
            rows = []
            kinds = ["perf_analyzer", "own"] if args.client == "both" else [args.client]
            shm = in_shared_memory([*args.server_arg, *flags])
            try:
                for c in levels:
                    for kind in kinds:
                        client = Client(args.perf_analyzer, kind, args.client_cores, args.pa_memory_gb, args.pa_count,
                                        args.client_procs, args.pa_count_from, shm, args.client_timeout)
                        row = perf(client, "resnet50", "127.0.0.1:8000", "http", c, args.window_ms, server, tmp,
                                   shape=[3, 224, 224], input_name="input", profiler=profiler, label=label)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                pairs = []
                if lone is not None:
                    print(f"paired lone windows, {label} ...", flush=True)
                    client = Client(args.perf_analyzer, kinds[0], args.client_cores, args.pa_memory_gb, 0, 1,
                                    shared_memory=shm, timeout_s=args.client_timeout)
                    pairs = paired_lone(lone, client, "127.0.0.1:8000", args.paired_rounds, args.paired_window_ms,
                                        tmp)
                frontends = server.frontend_state()
            finally:
                server.stop()
            results["resnet50_http"][label] = {"flags": flags, "env": configs_env[label], "rows": rows,
                                               "paired_lone": pairs, "frontends": frontends}
        if lone is not None:
            lone.close()
        if args.floor_seconds > 0:
            import transport_floor

            try:
                results["floor"] = transport_floor.floor(shape=[3, 224, 224], answer_bytes=RESNET_ANSWER_BYTES,
                                                         hold_ms=base["b1_p50_ms"], seconds=args.floor_seconds,
                                                         server_cores=args.server_cores,
                                                         client_cores=args.client_cores)
                print(json.dumps(results["floor"]), flush=True)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # the tiny model's runs still come
                print(f"the platform's floor was not measured: {exc}", flush=True)
    if not args.skip_tiny:
        tiny = models.tiny()
        rows = []
        states: dict[str, list[str]] = {}
        for label, flags in configs:
            print(f"trtop serve tiny, {label}: {flags}", flush=True)
            try:
                server = Server(tiny, "tiny", 8010, 8011, ["--max-batch", "64", *args.server_arg, *flags],
                                tmp / f"server-tiny-{label}.log", args.tiny_server_cores or args.server_cores,
                                env=configs_env[label])
            except RuntimeError as exc:  # one configuration that does not start must not lose the others' rows
                rows.append({"label": label, "protocol": "-", "concurrency": 0, "stable": False, "error": str(exc)})
                print(json.dumps(rows[-1]), flush=True)
                continue
            client = Client(args.perf_analyzer, "perf_analyzer", args.tiny_client_cores or args.client_cores,
                            args.pa_memory_gb, args.pa_count, 1, args.pa_count_from,
                            in_shared_memory([*args.server_arg, *flags]), args.client_timeout)
            try:
                ports = {"http": "127.0.0.1:8010", "grpc": "127.0.0.1:8011"}
                for protocol, url in ((p, ports[p]) for p in args.tiny_protocols.split(",")):
                    for c in (int(x) for x in args.tiny_concurrency.split(",")):
                        row = perf(client, "tiny", url, protocol, c, args.tiny_window_ms, server, tmp,
                                   profiler=profiler, label=label)
                        row.update(protocol=protocol, label=label)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                states[label] = server.frontend_state()
            finally:
                server.stop()
        results["tiny"] = rows
        results["tiny_cores"] = {"server": args.tiny_server_cores or args.server_cores,
                                 "client": args.tiny_client_cores or args.client_cores}
        results["tiny_frontends"] = states
    report(results)
    (args.out / "serve-gpu.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


_BOUND = re.compile(r"^=== trtop-http \d+: .*?\(bound ([^)]*)\)", re.M)
_THREADS = re.compile(r"^=== trtop-http \d+: .*; (Go threads [^;\n]*)$", re.M)


def in_shared_memory(flags: list[str]) -> bool:
    """The server runs with system shared memory on (``--shared-memory system`` or ``=system``): the clients
    then hand the tensors over in regions, as a sidecar in the server's pod would."""
    words = " ".join(flags).replace("=", " ").split()
    return any(w == "--shared-memory" and i + 1 < len(words) and words[i + 1] == "system" for i, w in enumerate(words))


def _resnet_table(label: str, flags: list[str], rows: list[dict[str, Any]], best: float) -> list[str]:
    lines = ["", f"trtop serve, {label} ({' '.join(flags) or 'default settings'}), over HTTP:", "",
             "| concurrency | client | img/s | / in-process best | p50 ms | p99 ms | p99/p50 | stable | GPU util % "
             f"| server cores busy | mean batch | batches <= {SHORT_BATCH_ROWS} rows % | ms per batch | queue ms "
             "| client peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    top: dict[str, Any] | None = None
    for r in rows:
        rss = r.get("client_peak_rss_gb", "")
        if "throughput" not in r:
            lines.append(f"| {r['concurrency']} | {r['client']} | failed (rc {r['rc']}): {failure_of(r)} | | | | | "
                         f"{r['stable']} | "
                         f"{r['gpu_util']:.0f} | {r['server_cores']:.1f} | {r['mean_batch']:.1f} | "
                         f"{100 * r.get('short_batches', float('nan')):.0f} | {r['batch_ms']:.2f} | "
                         f"{r['queue_ms']:.2f} | {rss} |")
            continue
        tail = r["p99_ms"] / r["p50_ms"]
        lines.append(f"| {r['concurrency']} | {r['client']} | {r['throughput']:,.0f} | {r['throughput'] / best:.2f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {tail:.2f} | {'yes' if r['stable'] else 'NO'} | "
                     f"{r['gpu_util']:.0f} | {r['server_cores']:.1f} | {r['mean_batch']:.1f} | "
                     f"{100 * r.get('short_batches', float('nan')):.0f} | {r['batch_ms']:.2f} | "
                     f"{r['queue_ms']:.2f} | {rss} |")
        if top is None or r["throughput"] > top["throughput"]:
            top = r
    if top is not None:
        ok = top["throughput"] / best >= TARGET_RATIO
        lines.append(f"\nBest: {top['throughput']:,.0f} img/s at concurrency {top['concurrency']} = "
                     f"{top['throughput'] / best:.2f} x in-process best (target >= {TARGET_RATIO}): "
                     f"{'met' if ok else 'NOT met'}")
    # The other two conditions, at every concurrency: stable windows, p99 <= TARGET_TAIL x p50.
    misses = [f"{r['concurrency']}: " + ("failed" if "throughput" not in r else "not stable" if not r["stable"]
                                        else f"p99/p50 {r['p99_ms'] / r['p50_ms']:.2f}")
              for r in rows if "throughput" not in r or not r["stable"] or r["p99_ms"] > TARGET_TAIL * r["p50_ms"]]
    if rows:
        lines.append(f"Stable windows and p99 <= {TARGET_TAIL} x p50 at every concurrency: "
                     + (f"NOT met ({', '.join(misses)})" if misses else "met"))
    return lines


def _lone_lines(rows: list[dict[str, Any]], pairs: list[tuple[float, float]], b1_ms: float) -> list[str]:
    """The lone request's target, judged on the one-client row against the early baseline and on the paired
    windows (the median of served - alone)."""
    lines = []
    one = next((r for r in rows if r["concurrency"] == 1 and "p50_ms" in r), None)
    if one is not None:
        over = one["p50_ms"] - b1_ms
        lines.append(f"One client: p50 {one['p50_ms']:.3f} ms = batch 1 {over:+.3f} ms (baseline {b1_ms:.3f} ms; "
                     f"target <= + {TARGET_LONE_MS}): {'met' if over <= TARGET_LONE_MS else 'NOT met'}")
    if pairs:
        diffs = [served - alone for alone, served in pairs]
        median = float(np.median(diffs))
        lines.append("Paired windows (engine alone -> served, ms): "
                     + ", ".join(f"{a:.3f} -> {b:.3f} ({b - a:+.3f})" for a, b in pairs)
                     + f"; median {median:+.3f} (target <= + {TARGET_LONE_MS}): "
                     + ("met" if median <= TARGET_LONE_MS else "NOT met"))
    return lines


def _frontend_lines(state: list[str], prefix: str = "") -> list[str]:
    """The native front-ends' rules at the end of a server's runs (none: Python front-ends, or no dump came)."""
    return [f"{prefix}native front-ends at the end: " + "; ".join(state)] if state else []


def reloaded(results: dict[str, Any]) -> dict[str, Any]:
    """A run's results as ``report`` takes them, from its JSON (where the buckets' int keys became strings)."""
    base = results.get("inprocess")
    if base is not None:
        for run in (base, base.get("plain", {}), base.get("engine_path", {})):
            if "throughput" in run:
                run["throughput"] = {int(k): v for k, v in run["throughput"].items()}
    return results


def report(results: dict[str, Any]) -> None:
    lines = []
    if "inprocess" in results:
        base = results["inprocess"]
        best = base["best"]
        for label, run in (("plain session.run", base["plain"]), ("the server's engine path", base["engine_path"])):
            lines.append(f"In-process ONNX Runtime CUDA, ResNet-50 fp32, {label}: best {run['best']:,.0f} img/s at "
                         f"batch {run['best_batch']}; batch 1: {run['throughput'][1]:,.0f} img/s, p50 "
                         f"{run['b1_p50_ms']:.2f} ms. By bucket: "
                         + ", ".join(f"{b}: {v:,.0f}" for b, v in run["throughput"].items()))
        lines.append(f"Baseline (the better): {best:,.0f} img/s, batch-1 p50 {base['b1_p50_ms']:.2f} ms")
        for label, run in results["resnet50_http"].items():
            lines += _resnet_table(label, run["flags"], run["rows"], best)
            lines += _lone_lines(run["rows"], run.get("paired_lone", []), base["b1_p50_ms"])
            lines += _frontend_lines(run.get("frontends", []))
        if "floor" in results:
            f = results["floor"]
            lines.append(f"\nThe platform's floor under a lone request (a server with no logic that spins "
                         f"{f['hold_ms']:.3f} ms before each answer, one `loadclient` connection): p50 "
                         f"{f['floor_p50_ms']:.3f} ms = {f['over_hold_ms']:+.3f} ms over its hold, before any "
                         f"server does anything")
    if "tiny" in results:
        # The engine process's cores apart, and its busiest thread: at one core its event loop is the request
        # ceiling (eighteenth and twenty-fifth sessions).
        cores = results.get("tiny_cores", {})
        if cores.get("server") or cores.get("client"):
            lines.append(f"\ntiny model: server on cores {cores.get('server') or 'any'}, client on "
                         f"{cores.get('client') or 'any'}")
        lines.append("\n| tiny model | server | concurrency | req/s | p50 ms | p99 ms | stable | server cores busy | "
                     "engine process cores | its busiest thread | mean batch |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        nan = float("nan")
        for r in results["tiny"]:
            if "error" in r and "throughput" not in r:
                lines.append(f"| {r['protocol']} | {r.get('label', 'default')} | {r['concurrency']} | failed: "
                             f"{failure_of(r)} | | | | | | | |")
                continue
            engine = (r.get("cores_by_process") or [nan])[0]
            lines.append(f"| {r['protocol']} | {r.get('label', 'default')} | {r['concurrency']} | "
                         f"{r.get('throughput', nan):,.0f} | {r.get('p50_ms', nan):.2f} | {r.get('p99_ms', nan):.2f} | "
                         f"{'yes' if r['stable'] else 'NO'} | {r['server_cores']:.1f} | {engine:.2f} | "
                         f"{r.get('engine_top_thread', nan):.2f} | {r.get('mean_batch', nan):.1f} |")
        for label in dict.fromkeys(r.get("label", "default") for r in results["tiny"]):
            ran = {r["protocol"] for r in results["tiny"] if r.get("label", "default") == label}
            for protocol in (p for p in ("http", "grpc") if p in ran):  # a protocol not asked for is not judged
                got = max((r.get("throughput", 0.0) for r in results["tiny"]
                           if r["protocol"] == protocol and r.get("label", "default") == label), default=0.0)
                lines.append(f"tiny ceiling over {protocol} ({label}): {got:,.0f} req/s (target >= "
                             f"{TARGET_TINY:,.0f}): {'met' if got >= TARGET_TINY else 'NOT met'}")
            lines += _frontend_lines(results.get("tiny_frontends", {}).get(label, []), f"tiny model ({label}): ")
    text = "\n".join(lines)
    results["report"] = text
    print("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
