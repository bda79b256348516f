"""Which cores the server's threads ran on and how long they waited, runnable, for one: ``/proc`` sampled
beside a bench run, then reported per server process.

    python3 bench/thread_waits.py sample waits.txt 300 &   # beside bench/serve_gpu.py (on the GPU host: $OUT/...)
    python3 bench/thread_waits.py report waits.txt

``sample`` writes, every ``--every`` seconds, one line per thread of every ``trtop serve`` engine process and
native front-end (``trtop-http``; the keep-awake spinners are left out): time, pid, tid, name, the core it last
ran on, its CPU ticks, and its ``schedstat``: nanoseconds on a core, nanoseconds runnable on a run queue
(waiting for a core), time slices. ``report`` prints, per process, each thread that ran more than
``--min-run-s`` between its first and last sample: its CPU seconds, its run-queue wait (in all and per time
slice) and the cores it was seen on most. Why: on one H100 host a lone request's p99 went from 1.6 to 4.3 ms on
four of seven fresh servers (docs/server-measured.md, thirty-fifth session); a thread that waits for a core
(another thread of the server on its core) shows here as milliseconds of wait per second.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    at: float
    name: str
    core: int
    run_ns: int
    wait_ns: int
    slices: int


def _server_process(pid: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    name = Path(argv[0].decode(errors="replace")).name
    return name == "trtop-http" or (name.startswith("python") or name == "trtop") and b"serve" in argv


def sample(path: Path, seconds: float, every: float = 0.2) -> None:
    end = time.time() + seconds
    with path.open("w") as out:
        while time.time() < end:
            now = time.time()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                if not _server_process(pid):
                    continue
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    try:
                        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                        run_ns, wait_ns, slices = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                    except (OSError, ValueError):
                        continue
                    name = stat[stat.index("(") + 1:stat.rindex(")")].replace(" ", "_")
                    fields = stat[stat.rindex(")") + 2:].split()  # from the state, stat's third field, on
                    out.write(f"{now:.2f} {pid} {tid} {name} {fields[36]} {int(fields[11]) + int(fields[12])} "
                              f"{run_ns} {wait_ns} {slices}\n")
            out.flush()
            time.sleep(every)


def parse(lines: Iterable[str]) -> dict[str, dict[str, list[Sample]]]:
    """pid -> tid -> its samples in order (a process's own thread has tid == pid)."""
    processes: dict[str, dict[str, list[Sample]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in lines:
        parts = line.split()
        if len(parts) != 9:
            continue
        at, pid, tid, name, core, _ticks, run_ns, wait_ns, slices = parts
        processes[pid][tid].append(Sample(float(at), name, int(core), int(run_ns), int(wait_ns), int(slices)))
    return processes


def report(processes: dict[str, dict[str, list[Sample]]], min_run_s: float = 0.2) -> list[str]:
    lines = []
    for pid, threads in processes.items():
        own = threads.get(pid)
        if not own:
            continue
        parts = []
        for tid, samples in threads.items():
            first, last = samples[0], samples[-1]
            run_s = (last.run_ns - first.run_ns) / 1e9
            if run_s <= min_run_s:
                continue
            wait_ms = (last.wait_ns - first.wait_ns) / 1e6
            slices = max(last.slices - first.slices, 1)
            cores = ",".join(str(c) for c, _ in collections.Counter(s.core for s in samples).most_common(3))
            parts.append(f"  {tid} {first.name}: ran {run_s:.1f} s, waited {wait_ms:.0f} ms for a core "
                         f"({wait_ms * 1e3 / slices:.1f} us a slice, {slices} slices), cores {cores}")
        span = own[-1].at - own[0].at
        lines.append(f"{pid} {own[0].name} ({span:.0f} s sampled)" + ("" if parts else ": no thread ran"))
        lines += parts
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("out", type=Path)
    s.add_argument("seconds", type=float)
    s.add_argument("--every", type=float, default=0.2)
    r = sub.add_parser("report")
    r.add_argument("path", type=Path)
    r.add_argument("--min-run-s", type=float, default=0.2)
    args = ap.parse_args()
    if args.command == "sample":
        sample(args.out, args.seconds, args.every)
    else:
        print("\n".join(report(parse(args.path.read_text().splitlines()), args.min_run_s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
