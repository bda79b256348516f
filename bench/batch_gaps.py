"""Where the time between a GPU's batches goes: the engine's per-batch stamps (``bench/trace_batches``), read back.

    # a server with the stamps on, loaded as usual (here by serve_gpu.py on the GPU host):
    --config "gaps=PYTHONPATH=$PWD/bench/trace_batches:/tmp/site:$PWD/operator TRTOP_BATCH_TRACE=/tmp/gaps"
    python3 bench/batch_gaps.py /tmp/gaps

For each engine process's file: the batches run on compute threads (inline runs on the event loop are left out),
and the median, p90 and mean microseconds of each step of a batch: the hand-over to its thread (``launch ->
thread``), the thread's work before its copies (``thread -> copy``), the copies queued and waited for (``copy ->
copied``), before the run (``copied -> run``), the run with its outputs' copy back (``run -> ran``), after it
(``ran -> computed``), the way back to the event loop (``computed -> landed``); then the gaps between batches:
from one run's end to the next run's start (the device's compute idle) and from a batch's landing to the next
launch. Lastly the share of the traced span that runs took. Reads the stamps of the whole file: load the server
at one concurrency while stamping.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

STEPS = [("launch", "thread"), ("thread", "copy"), ("copy", "copied"), ("copied", "run"), ("run", "ran"),
         ("ran", "computed"), ("computed", "landed")]


def read(path: Path) -> list[tuple[int, str, int]]:
    """(ns, name, thread) of every stamp, in time order."""
    events = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            events.append((int(parts[2]), parts[0], int(parts[1])))
    return sorted(events)


def batches(events: list[tuple[int, str, int]]) -> list[dict[str, int]]:
    """One dict of stamp -> ns per batch run on a compute thread (launch and landed from the event loop's
    thread matched in order)."""
    loop_threads = {t for _, name, t in events if name in ("launch", "landed")}
    launches: collections.deque[int] = collections.deque()
    open_on: dict[int, dict[str, int]] = {}  # compute thread -> its batch in progress
    landing: collections.deque[dict[str, int]] = collections.deque()
    done: list[dict[str, int]] = []
    for ns, name, thread in events:
        if name == "launch":
            launches.append(ns)
        elif name == "landed":
            if landing:
                b = landing.popleft()
                b["landed"] = ns
                done.append(b)
        elif thread in loop_threads:
            continue  # an inline run on the event loop
        elif name == "thread":
            open_on[thread] = {"thread": ns, **({"launch": launches.popleft()} if launches else {})}
        elif thread in open_on:
            b = open_on[thread]
            b.setdefault(name, ns)
            if name == "computed":
                landing.append(open_on.pop(thread))
    for b in done:  # a backend without bound sessions (no run stamps): the batch's time on its thread stands in
        b.setdefault("run", b["thread"])
        b.setdefault("ran", b["computed"])
    return [b for b in done if "launch" in b]


def summary(values: list[float]) -> str:
    if not values:
        return "| | | |"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return f"| {statistics.median(values):.1f} | {p90:.1f} | {statistics.fmean(values):.1f} |"


def report(path: Path) -> list[str]:
    bs = batches(read(path))
    if len(bs) < 2:  # a gap needs two
        return [f"{path.name}: {len(bs)} batches on compute threads; nothing to report"]
    out = [f"### {path.name}: {len(bs)} batches on compute threads", "", "| step | median us | p90 | mean |",
           "|---|---|---|---|"]
    for a, b in STEPS:
        vals = [(x[b] - x[a]) / 1e3 for x in bs if a in x and b in x]
        if vals:
            out.append(f"| {a} -> {b} {summary(vals)}")
    by_run = sorted(bs, key=lambda x: x["run"])
    idle = [(n["run"] - p["ran"]) / 1e3 for p, n in zip(by_run, by_run[1:]) if n["run"] > p["ran"]]
    out.append(f"| a run's end -> the next run's start {summary(idle)}")
    by_launch = sorted(bs, key=lambda x: x["launch"])
    nxt = [(n["launch"] - p["landed"]) / 1e3 for p, n in zip(by_launch, by_launch[1:]) if n["launch"] > p["landed"]]
    out.append(f"| landed -> the next launch {summary(nxt)}")
    span = by_run[-1]["ran"] - by_run[0]["run"]
    busy = sum(x["ran"] - x["run"] for x in bs)
    out.append("")
    out.append(f"runs took {busy / span:.1%} of the {span / 1e9:.1f} s from the first run's start to the last one's end")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="TRTOP_BATCH_TRACE's folder")
    args = ap.parse_args(argv)
    files = sorted(args.folder.glob("batches-*.txt"))
    if not files:
        print(f"no batches-*.txt in {args.folder}", file=sys.stderr)
        return 1
    for path in files:
        print("\n".join(report(path)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
