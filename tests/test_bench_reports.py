"""The benchmarks' own arithmetic and report plumbing (bench/ is run by hand, not in CI; these parts are pure)."""
from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the benches import their neighbours (loadclient, models)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # a dataclass looks its module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_cpu_budget_leaves_the_server_what_the_model_and_the_client_do_not_take() -> None:
    serve = _bench("serve")
    budget, left = serve.cpu_budget(cores=2, best=50_000.0, ratio=0.5, model_ms=0.040, client_ms=0.024)
    assert budget == pytest.approx(0.080)  # 2 cores / 25,000 requests per second
    assert left == pytest.approx(0.016)
    _, over = serve.cpu_budget(cores=2, best=50_000.0, ratio=0.85, model_ms=0.040, client_ms=0.024)
    assert over < 0  # a target no server can reach on those cores


def test_a_saved_gpu_run_reports_again_from_its_json(capsys: pytest.CaptureFixture[str]) -> None:
    serve_gpu = _bench("serve_gpu")
    engine = {"best": 5746.0, "best_batch": 32, "b1_p50_ms": 1.06, "throughput": {1: 933.0, 32: 5746.0}}
    plain = {"best": 4041.0, "best_batch": 16, "b1_p50_ms": 1.38, "throughput": {1: 679.0, 16: 4041.0}}
    results = {"inprocess": {**engine, "plain": plain, "engine_path": engine}, "resnet50_http": {},
               "floor": {"hold_ms": 1.06, "floor_p50_ms": 1.2, "floor_p99_ms": 1.3, "over_hold_ms": 0.14,
                         "requests": 3319}}
    saved = json.loads(json.dumps(results))  # as serve-gpu.json holds it: the buckets' keys become strings
    with pytest.raises(KeyError):
        serve_gpu.report(json.loads(json.dumps(results)))
    serve_gpu.report(serve_gpu.reloaded(saved))
    out = capsys.readouterr().out
    assert "the server's engine path: best 5,746 img/s at batch 32; batch 1: 933 img/s" in out
    assert "p50 1.200 ms = +0.140 ms over its hold" in out


def test_a_tiny_point_whose_client_was_killed_says_so_in_a_few_words() -> None:
    serve_gpu = _bench("serve_gpu")
    settings = "\n*** Measurement Settings ***\n  Batch size: 1\n  Measurement window: 4000 msec\n"
    killed = {"protocol": "http", "concurrency": 256, "stable": False, "killed": True, "windows": [37345.3],
              "client_cores": 7.97, "error": "perf_analyzer still running after 45s: killed (the server state "
                                             "dumped to its log first)" + settings}
    said = serve_gpu.failure_of(killed)
    assert said == ("perf_analyzer still running after 45s, killed (the client kept 7.97 cores busy); "
                    "windows seen: 37,345")  # before: the tail of the client's settings
    unstable = {"stable": False, "windows": [21000.0, 25000.0], "error": "no stable windows"}
    assert serve_gpu.failure_of(unstable) == "no 3 stable windows in 2: 21,000 / 25,000"


@contextlib.contextmanager
def _health(status: int) -> Iterator[str]:
    """A stand-in health endpoint on a free port answering ``status`` (the bench's wait is tested, not a server)."""
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(status if self.path == "/v2/health/ready" else 404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def test_the_benches_wait_for_ready_says_why_a_server_never_came_and_leaves_none_behind() -> None:
    ready = _bench("ready")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with _health(200) as url, subprocess.Popen(sleeper) as proc:
        ready.wait_ready(proc, url + "/", 10)  # 200: back at once, the process left running
        assert proc.poll() is None
        proc.kill()

    with subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]) as exited, \
            pytest.raises(RuntimeError, match="server exited 3: model not found"):
        ready.wait_ready(exited, "http://127.0.0.1:9", 10, lambda: "model not found")

    with _health(503) as url, subprocess.Popen(sleeper) as stuck:  # 503: still warming its buckets
        with pytest.raises(RuntimeError, match="not ready within 1 s"):
            ready.wait_ready(stuck, url, 1, poll_s=0.05)
        assert stuck.poll() is not None  # killed: it would take the next benchmark's cores


def test_thread_waits_reports_each_busy_thread_its_wait_for_a_core_and_its_cores() -> None:
    """``bench/thread_waits.py report``: per process, the threads that ran, with their run-queue wait in all and
    per slice between their first and last samples, and the cores seen most; idle threads are left out."""
    waits = _bench("thread_waits")
    lines = [  # time pid tid name core ticks run_ns wait_ns slices
        "1.0 10 10 python3 3 0 1000000000 5000000 1000",
        "1.0 10 11 python3 4 0 0 0 0",
        "1.0 20 21 trtop-http 5 0 0 0 0",
        "2.0 10 10 python3 3 0 1600000000 9000000 3000",
        "2.0 10 11 python3 4 0 100 0 1",
        "2.0 20 21 trtop-http 6 0 300000000 30000000 1500",
        "3.0 10 10 python3 7 0 2000000000 11000000 5000",
        "3.0 20 20 trtop-http 6 0 0 0 0",
        "3.0 20 21 trtop-http 6 0 500000000 40000000 2000",
        "a line cut short",
    ]
    out = waits.report(waits.parse(lines))
    assert out == [
        "10 python3 (2 s sampled)",
        "  10 python3: ran 1.0 s, waited 6 ms for a core (1.5 us a slice, 4000 slices), cores 3,7",
        "20 trtop-http (0 s sampled)",
        "  21 trtop-http: ran 0.5 s, waited 40 ms for a core (20.0 us a slice, 2000 slices), cores 6,5",
    ]


def test_trace_lone_takes_a_configs_environment_words_apart_from_its_server_flags() -> None:
    """``trace_lone.py --config old=PYTHONPATH=/x/operator,--frontends=2``: the leading ``VAR=value`` words go to the
    server's environment (PYTHONPATH: another tree), the rest are its flags; a flag's own ``=`` is no such word."""
    trace = _bench("trace_lone")
    assert trace.server_env(["PYTHONPATH=/x/operator", "TRTOP_LOOP_POLL_MS=0", "--frontends=2", "--keep-awake=on"]) == (
        {"PYTHONPATH": "/x/operator", "TRTOP_LOOP_POLL_MS": "0"}, ["--frontends=2", "--keep-awake=on"])
    assert trace.server_env(["--http-frontend=native"]) == ({}, ["--http-frontend=native"])
    assert trace.server_env([]) == ({}, [])


def test_gpu_like_runs_sleep_by_their_rows_in_turn_and_answer_each_row(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench/gpu_like.py``'s backend: a batch sleeps its fixed and per-row time, two instances' sleeps take turns
    (one GPU), and every output has the batch's rows; ``$VAR`` in a config's environment words comes from the
    bench's own."""
    import numpy as np

    from trtop.serve.runtime import RuntimeOptions

    gpu_like, models = _bench("gpu_like"), _bench("models")
    assert gpu_like.sleep_s(32, base_ms=0.8, row_ms=0.6) == pytest.approx(0.020)
    monkeypatch.setenv(gpu_like.BASE_MS_ENV, "40")
    monkeypatch.setenv(gpu_like.ROW_MS_ENV, "0")
    rt = gpu_like.GpuLike(models.fat(tmp_path / "fat.onnx"), RuntimeOptions(threads=1))
    feeds = {"input": np.ones((3, 3, 224, 224), np.float32)}
    out = rt.run(feeds, ["logits"])
    assert out["logits"].shape == (3, 1000) and not out["logits"].any()
    clock = __import__("time").monotonic
    begin = clock()
    threads = [threading.Thread(target=rt.run, args=(feeds, ["logits"])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock() - begin >= 0.080, "two instances' runs slept side by side: one GPU runs them in turn"
    assert gpu_like.expand("/tmp/old:$PATH:${HOME}:$NOPE", {"PATH": "/a:/b", "HOME": "/h"}) == "/tmp/old:/a:/b:/h:$NOPE"


def test_a_benchs_config_splits_its_words_as_a_shell_would_and_refuses_comma_joined_flags() -> None:
    """``--config NAME=WORDS`` in serve_gpu.py, trace_lone.py and gpu_like.py (``bench/configs.py``): leading
    ``VAR=value`` words are the server's environment, the rest its flags (a flag's own commas stay); a word holding
    ``,--`` is refused: a flag joined to an environment value by a comma ran the wrong configuration once."""
    configs = _bench("configs")
    assert configs.parse_config("old=PATH=/tmp/old:$PATH --instances=1 --buckets=1,2,4") == (
        "old", {"PATH": "/tmp/old:$PATH"}, ["--instances=1", "--buckets=1,2,4"])
    assert configs.parse_config("i2=--instances=2") == ("i2", {}, ["--instances=2"])
    assert configs.parse_config("new2=") == ("new2", {}, [])
    assert configs.parse_config("q=PYTHONPATH='/a b' --x") == ("q", {"PYTHONPATH": "/a b"}, ["--x"])
    with pytest.raises(ValueError, match="NAME=WORDS"):
        configs.parse_config("--instances=1")
    with pytest.raises(ValueError, match="split at"):
        configs.parse_config("oldi1=PATH=/tmp/old:$PATH,--instances=1")
    with pytest.raises(ValueError, match="split at"):
        configs.parse_config("n=--http-frontend=native,--frontends=2")


def test_a_benchs_server_keeps_its_cores_awake_unless_its_environment_says_otherwise() -> None:
    """The benches' servers run with ``--keep-awake on`` (auto spins only on a pod's own cores, and a bench's
    server has no CPU limit); the caller's environment or a config's words still choose."""
    from trtop.serve.settings import parse_settings

    configs = _bench("configs")
    env = configs.server_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "TRTOP_KEEP_AWAKE": "on"}
    assert parse_settings([], env=env).keep_awake == "on"
    assert configs.server_env({"TRTOP_KEEP_AWAKE": "auto"})["TRTOP_KEEP_AWAKE"] == "auto"


def test_the_short_batches_are_read_from_the_servers_own_metrics() -> None:
    """``serve_gpu.histograms`` on the exposition a server writes: batches of at most ``SHORT_BATCH_ROWS`` rows
    counted apart from the rest (a sign that requests were held elsewhere while the engine's queue ran out)."""
    from trtop.serve.metrics import ServerMetrics

    serve_gpu = _bench("serve_gpu")
    metrics = ServerMetrics("m")
    for rows in (1, serve_gpu.SHORT_BATCH_ROWS, serve_gpu.SHORT_BATCH_ROWS + 1, 32):
        metrics.batch_done(rows, 0.001)
    text, _ = metrics.render()
    got = serve_gpu.histograms(text.decode() if isinstance(text, bytes) else text)
    assert got["batch_size_count"] == 4 and got["batch_size_sum"] == 1 + 8 + 9 + 32
    assert got["batch_size_short"] == 2 and serve_gpu.short_share(got) == 0.5 and serve_gpu.mean_batch(got) == 12.5
    assert serve_gpu.short_share({}) != serve_gpu.short_share({})  # nan: no batch ran


def test_batch_gaps_pairs_each_batch_on_its_thread_and_leaves_inline_runs_out(tmp_path: Path) -> None:
    """``bench/batch_gaps.py``: a batch's stamps from its compute thread are put with the event loop's launch and
    landing in order; a run on the event loop itself (a lone request inline) is no batch of a compute thread; the
    device's idle time is from one run's end to the next run's start."""
    gaps = _bench("batch_gaps")
    loop, slot = 1, 2
    stamps = [  # (name, thread, us)
        ("launch", loop, 0), ("thread", slot, 100), ("copy", slot, 150), ("copied", slot, 650), ("run", slot, 700),
        ("thread", loop, 800), ("computed", loop, 900),  # inline on the loop: left out
        ("ran", slot, 6700), ("computed", slot, 6750), ("landed", loop, 6900),
        ("launch", loop, 7000), ("thread", slot, 7400), ("run", slot, 7500), ("ran", slot, 13500),
        ("computed", slot, 13520), ("landed", loop, 13600),
    ]
    path = tmp_path / "batches-7.txt"
    path.write_text("".join(f"{name} {thread} {us * 1000}\n" for name, thread, us in stamps))
    batches = gaps.batches(gaps.read(path))
    assert [(b["launch"], b["thread"], b["run"], b["landed"]) for b in batches] == [
        (0, 100_000, 700_000, 6_900_000), (7_000_000, 7_400_000, 7_500_000, 13_600_000)]
    out = "\n".join(gaps.report(path))
    assert "| launch -> thread | 250.0 |" in out  # the median of 100 and 400 us
    assert "| a run's end -> the next run's start | 800.0 |" in out
    assert "| landed -> the next launch | 100.0 |" in out
    assert "runs took 93.8% of the 0.0 s" in out  # 12 of the 12.8 ms from 0.7 to 13.5


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "0.0002 0.001 True"),
    ({"TRTOP_GAPS_KEEP_SWITCH": "1", "TRTOP_GAPS_NO_WAIT": "1", "TRTOP_GAPS_NO_LAND": "1"}, "0.005 1e-09 False"),
])
def test_trace_batches_leaves_the_named_parts_of_slot_handoff_out(env: dict[str, str], expected: str) -> None:
    """``bench/trace_batches`` first on a server's path, without stamps: each ``TRTOP_GAPS_NO_*``/``KEEP_*``
    variable takes its part of ``--slot-handoff on`` out before the server's modules read it
    (bench/gpu/handoff_parts.sh); none set, the server's own values stay."""
    probe = ("import sys, asyncio\n"
             "from trtop.serve import service, scheduler\n"
             "from trtop.serve.backends import onnxruntime_impl\n"
             "from trtop.serve.batching import BatchPolicy\n"
             "async def main():\n"
             "    s = scheduler.Scheduler(lambda *a: None, BatchPolicy(max_batch=4), max_queue=4, land_starts=True)\n"
             "    print(service.HANDOFF_SWITCH_S, onnxruntime_impl.HANDOFF_S, s._land_starts)\n"
             "asyncio.run(main())\n")
    operator = BENCH.parent / "operator"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{BENCH / 'trace_batches'}:{operator}", **env})
    assert out.stdout.split("\n")[0] == expected
