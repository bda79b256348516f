"""Stage stamps in every Python process of ``trtop serve`` (engine, front-ends): for bench/trace_lone.py only.

Put this folder first on PYTHONPATH and name a folder in TRTOP_TRACE_DIR: each process appends
``name monotonic_ns`` lines to ``py-<pid>.txt`` there as requests pass the wrapped methods. Without
TRTOP_TRACE_DIR it does nothing. Engine process: ``e_rx`` (bytes from a front-end's channel),
``e_msg`` -> ``e_queued`` (a descriptor decoded and queued), ``e_thread`` -> ``e_computed`` (the batch on
its compute thread), ``e_landed`` (back on the event loop), ``e_replied`` (the reply queued),
``e_flush`` -> ``e_written`` (encoded and written to the channel). Python front-end: ``f_head``, ``f_body`` (the HTTP request read),
``f_send`` (descriptor queued), ``f_flush``, ``f_rx``, ``f_reply`` (the engine's answer decoded),
``f_answered`` (the HTTP answer written).
"""
from __future__ import annotations

import atexit
import os
import time
from typing import Any

_DIR = os.environ.get("TRTOP_TRACE_DIR", "")


def _install() -> None:
    from trtop.serve import channel, dispatcher, frontend, http_protocol, scheduler

    clock = time.monotonic_ns
    lines: list[str] = []
    path = os.path.join(_DIR, f"py-{os.getpid()}.txt")
    role = {"r": "x"}  # "e" in the engine process, "f" in a front-end: set by the first role-specific stamp

    def flush() -> None:
        if lines:
            with open(path, "a") as f:
                f.write("".join(lines))
            lines.clear()

    atexit.register(flush)

    def mark(name: str) -> None:
        lines.append(f"{name} {clock()}\n")
        if len(lines) >= 64:
            flush()

    def wrap(owner: Any, attr: str, before: str | None = None, after: str | None = None, when: Any = None,
             shared: bool = False) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if when is not None and not when(args):
                return original(*args, **kwargs)
            if before is not None:
                mark(f"{role['r']}_{before}" if shared else before)
                if not shared:
                    role["r"] = before[0]
            result = original(*args, **kwargs)
            if after is not None:
                mark(f"{role['r']}_{after}" if shared else after)
                if not shared:
                    role["r"] = after[0]
            return result

        setattr(owner, attr, wrapper)

    infer = lambda args: args[1][0] == "infer"  # noqa: E731
    done = lambda args: args[1][0] == "done"  # noqa: E731
    wrap(dispatcher.Dispatcher, "_on_message", before="e_msg", after="e_queued", when=infer)
    wrap(scheduler.Scheduler, "_compute", before="e_thread", after="e_computed")
    wrap(scheduler.Scheduler, "_land", before="e_landed")
    wrap(dispatcher.Dispatcher, "_answer", after="e_replied")
    wrap(http_protocol.SinkProtocol, "on_headers_complete", after="f_head")
    wrap(http_protocol.SinkProtocol, "on_message_complete", before="f_body")
    wrap(frontend.RemoteModel, "infer_started", after="f_send")
    wrap(frontend.RemoteModel, "on_message", before="f_reply", when=done)
    wrap(http_protocol.SinkProtocol, "_answer", after="f_answered")
    wrap(channel.Channel, "_flush", before="flush", after="written", shared=True)
    wrap(channel.Channel, "data_received", before="rx", shared=True)


if _DIR:
    _install()
