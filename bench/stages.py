"""Where one request's time goes inside ``trtop serve``: time stamps per stage, one process.

    PYTHONPATH=operator python3 bench/stages.py --report 2000 -- --model m.onnx --model-name m --frontends 0 ...

Runs the server (``trtop.cli serve`` with the flags after ``--``; ``--frontends 0``, since the
stages of a request are then in one process) with wrappers around the stages of the HTTP infer
path, and every ``--report`` requests prints, and appends to ``--out`` as JSON, the median
microseconds of each stage over those requests:

- ``head``: first bytes of the request seen by the protocol -> its headers parsed (request set up);
- ``body``: -> its body complete;
- ``to_app``: -> the infer route starts parsing it (the request task wakes; without a task: at once);
- ``parse``: -> the body parsed (JSON header, tensor views);
- ``admit``: -> admitted and queued in the scheduler;
- ``to_thread``: -> the compute thread starts the batch;
- ``compute``: the batch on the compute thread (copies to and from the device, the run, split);
- ``to_loop``: -> the event loop has the answer;
- ``resume``: -> the infer route runs again (the future's callbacks; the request task wakes, where it has one);
- ``encode``: -> the response is built;
- ``send``: -> the answer was written to the socket.

Measuring costs ~2 us per stage. For the bench only (the wrappers patch the server's classes
in this process); one connection at a time (the stamps of concurrent requests would mix).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

STAGES = ("head", "body", "to_app", "parse", "admit", "to_thread", "compute", "to_loop", "resume", "encode", "send")
_MARKS = ("first", "headers", "complete", "app", "parsed", "queued", "thread", "computed", "landed", "resumed",
          "answered", "sent")


def install(report_every: int, out: str) -> None:
    from trtop.serve import http_protocol, infer_http, scheduler

    clock = time.perf_counter
    marks: dict[str, float] = {}
    rows: list[list[float]] = []

    def wrap(owner: Any, name: str, before: str | None = None, after: str | None = None, once: bool = False) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before is not None and not (once and before in marks):
                marks[before] = clock()
            result = original(*args, **kwargs)
            if after is not None:
                marks[after] = clock()
            return result

        setattr(owner, name, wrapper)

    wrap(http_protocol.SinkProtocol, "data_received", before="first", once=True)
    wrap(http_protocol.SinkProtocol, "on_headers_complete", after="headers")
    wrap(http_protocol.SinkProtocol, "on_message_complete", before="complete")
    wrap(scheduler.Scheduler, "enqueue", after="queued")
    wrap(scheduler.Scheduler, "_compute", before="thread", after="computed")
    wrap(scheduler.Scheduler, "_land", before="landed")

    wrap(infer_http, "parse_infer_request", before="app", after="parsed")  # module functions too
    wrap(infer_http, "encode_infer_response", before="resumed", after="answered")
    call = infer_http.FastInfer.__call__
    answer = http_protocol.SinkProtocol._answer

    def record() -> None:
        marks["sent"] = clock()
        if "first" in marks and "app" in marks:  # an infer request read by the sink protocol
            for a, b in zip(_MARKS, _MARKS[1:]):  # a stage it skipped (an inline run: no hop) takes 0
                marks.setdefault(b, marks[a])
            rows.append([(marks[b] - marks[a]) * 1e6 for a, b in zip(_MARKS, _MARKS[1:])])
        marks.clear()
        if len(rows) >= report_every:
            import numpy as np

            med = np.percentile(np.array(rows), 50, axis=0)
            summary = {"requests": len(rows), **{s: round(float(v), 1) for s, v in zip(STAGES, med)},
                       "total_us": round(float(np.percentile(np.array(rows).sum(axis=1), 50)), 1)}
            print("stages p50 us: " + json.dumps(summary), flush=True)
            if out:
                with open(out, "a") as f:
                    f.write(json.dumps(summary) + "\n")
            rows.clear()

    async def call_marked(self: Any, scope: Any, receive: Any, send: Any) -> None:  # uvicorn's task path
        await call(self, scope, receive, send)
        record()

    def answer_marked(self: Any, *args: Any) -> None:  # the path without a task (http_protocol._answer)
        answer(self, *args)
        record()

    http_protocol.SinkProtocol._answer = answer_marked  # type: ignore[method-assign,assignment]
    infer_http.FastInfer.__call__ = call_marked  # type: ignore[method-assign]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", type=int, default=2000, help="print the medians every N requests")
    p.add_argument("--out", default="", help="append each report as a JSON line here")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="trtop serve flags, after --")
    args = p.parse_args()
    install(args.report, args.out)
    from trtop.serve.cli import main as serve

    flags = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    return serve(flags)


if __name__ == "__main__":
    sys.exit(main())
