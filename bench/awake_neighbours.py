"""What a ``--keep-awake`` spinner costs a neighbour outside the server's cgroup (the reason ``auto`` spins only on
a pod's own cores; docs/server.md, "Keeping the cores awake").

    .venv/bin/python bench/awake_neighbours.py [--core 1] [--seconds 3] [--model .work/bench/light.onnx --rounds 2]

1. The kernel's rule: a busy loop under ``SCHED_IDLE`` pinned to ``--core``, as the server's spinners are, beside a
   busy task of this process on the same core. The spinner runs in this process's session (one autogroup: the
   cgroup case of a pod's own processes) and then in a session of its own (another autogroup: as another pod's
   container is another cgroup); prints the share of the core the busy task got each time.
2. With ``--model`` (an ONNX file with input ``x``, e.g. the light model that ``bench/serve.py --model light``
   writes): ``trtop serve`` in a session of its own with ``--keep-awake on`` and then ``off``, alternating
   ``--rounds`` times, and one client connection pinned to ``--core`` in this session: its p50 and p99.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import loadclient  # noqa: E402
from ready import wait_ready  # noqa: E402
from serve import free_port  # noqa: E402

SPIN = ("import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
        "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n")


def busy_share(core: int, seconds: float, own_session: bool) -> float:
    """The share of ``core`` that a busy loop of this process gets beside a SCHED_IDLE spinner."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(core)], start_new_session=own_session)
    try:
        time.sleep(0.3)
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})
        try:
            t0, c0 = time.monotonic(), time.process_time()
            while time.monotonic() - t0 < seconds:
                pass
            return (time.process_time() - c0) / (time.monotonic() - t0)
        finally:
            os.sched_setaffinity(0, before)
    finally:
        spinner.kill()
        spinner.wait()


def one_connection(model: Path, shape: list[int], keep_awake: str, core: int, seconds: float) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "TRTOP_DEVICE": "cpu", "PATH": os.pathsep.join([str(ROOT / ".work" / "native"),
                                                                          os.environ.get("PATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "trtop.cli", "serve", "--model", str(model), "--model-name", "m",
                             "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0", "--log-level", "warning",
                             "--keep-awake", keep_awake], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", 120)
        return loadclient.run(host="127.0.0.1", port=port, model="m", input_name="x", shape=shape, concurrency=1,
                              seconds=seconds, warmup=2.0, procs=1, cores=str(core))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--model", type=Path, help="also serve this model (input x) and time one client connection")
    ap.add_argument("--shape", default="3,64,64", help="one request's shape without the batch dimension")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for own in (False, True):
        share = busy_share(args.core, args.seconds, own)
        where = "in a session (cgroup) of its own" if own else "in this process's session (its cgroup)"
        print(f"a SCHED_IDLE spinner {where}: a busy task beside it got {share:.0%} of core {args.core}", flush=True)
    if args.model:
        for r in range(1, args.rounds + 1):
            for mode in ("on", "off"):
                shape = [int(d) for d in args.shape.split(",")]
                res = one_connection(args.model, shape, mode, args.core, max(args.seconds, 8.0))
                print(f"round {r}, --keep-awake {mode:3} (server in its own session), one connection on core "
                      f"{args.core}: {res['throughput']:.0f} req/s, p50 {res['p50_ms']:.3f} ms, "
                      f"p99 {res['p99_ms']:.3f} ms, errors {res['errors']}", flush=True)


if __name__ == "__main__":
    main()
