"""Per-batch stamps in the engine process of ``trtop serve``: for bench/batch_gaps.py only.

Put this folder first on PYTHONPATH and name a folder in TRTOP_BATCH_TRACE: the engine process appends
``name thread_id monotonic_ns`` lines to ``batches-<pid>.txt`` there. Stamps: ``launch`` (the event loop hands
a batch to a compute thread), ``thread`` -> ``computed`` (the batch on that thread, ``Scheduler._compute``),
``copy`` -> ``copied`` (a GPU slot's copies of the requests' rows, queued and waited for,
``DeviceCopier.copy_rows``), ``run`` -> ``ran`` (the bound session's run and the outputs' copy back,
``Bound._run``), ``landed`` (the batch back on the event loop, ``Scheduler._land``). Without TRTOP_BATCH_TRACE
it does nothing. Stamping costs ~1-3 us a stamp, a few per batch.

Trials of what could shorten the gaps, each on where its variable is set (bench only; the four together are the
server's ``--slot-handoff on``, measured as trials first: docs/server-measured.md, thirty-eighth session):
``TRTOP_GAPS_SWITCH_S``: the engine's GIL switch interval (``sys.setswitchinterval``; Python's default 0.005: a
thread that wants the GIL back waits that long for a busy event loop to let go of it).
``TRTOP_GAPS_PYDLL=1``: a slot's copies to the GPU are queued holding the GIL (libcudart through ``ctypes.PyDLL``):
its thread then goes from its first copy to its wait for them without asking the event loop for the GIL per copy.
``TRTOP_GAPS_HANDOFF=1``: the event loop, having handed a batch to a compute thread, waits (at most 1 ms) for that
thread to start its copies or its run, so that the thread gets the GIL at once.
``TRTOP_GAPS_LAUNCH_FIRST=1``: a batch that lands frees its instance and the next batch is started before the
landed batch's requests are answered (the scheduler answers first, then its worker task starts the next).

Parts of ``--slot-handoff on`` left out, to tell what each costs or pays (these work without TRTOP_BATCH_TRACE):
``TRTOP_GAPS_NO_LAND=1``: the scheduler answers a landed batch before it starts the next (no ``land_starts``).
``TRTOP_GAPS_KEEP_SWITCH=1``: the GIL switch interval stays at Python's 0.005 s.
``TRTOP_GAPS_NO_WAIT=1``: the event loop does not wait for the slot's thread (``HANDOFF_S`` of 1 ns).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
import time
from typing import Any

_DIR = os.environ.get("TRTOP_BATCH_TRACE", "")


def _install() -> None:
    from trtop.serve import scheduler
    from trtop.serve.backends import onnxruntime_bind

    clock, ident = time.monotonic_ns, threading.get_ident
    lines: list[str] = []
    path = os.path.join(_DIR, f"batches-{os.getpid()}.txt")

    def flush() -> None:
        if lines:
            taken = lines[:]
            del lines[:len(taken)]
            with open(path, "a") as f:
                f.write("".join(taken))

    atexit.register(flush)

    def mark(name: str) -> None:
        lines.append(f"{name} {ident()} {clock()}\n")
        if len(lines) >= 512:
            flush()

    def wrap(owner: Any, attr: str, before: str | None = None, after: str | None = None) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                mark(before)
            try:
                return original(*args, **kwargs)
            finally:
                if after is not None:
                    mark(after)

        setattr(owner, attr, wrapper)

    started = threading.Event()  # TRTOP_GAPS_HANDOFF: the compute thread reached its copies or its run
    handoff = os.environ.get("TRTOP_GAPS_HANDOFF") == "1"

    def reached(owner: Any, attr: str) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started.set()
            return original(*args, **kwargs)

        setattr(owner, attr, wrapper)

    if handoff:
        launch = scheduler.Scheduler._launch

        def handed(self: Any, *args: Any, **kwargs: Any) -> Any:
            started.clear()
            result = launch(self, *args, **kwargs)
            started.wait(0.001)
            return result

        scheduler.Scheduler._launch = handed  # type: ignore[method-assign]
        reached(onnxruntime_bind.DeviceCopier, "copy_rows")
        reached(onnxruntime_bind.Bound, "_run")
    if os.environ.get("TRTOP_GAPS_PYDLL") == "1":
        from trtop.gpu import cuda

        def copy_to_device(self: Any, dst: int, src: int, nbytes: int, stream: int) -> None:
            fn = getattr(self, "_held_copy", None)
            if fn is None:
                fn = ctypes.PyDLL(self.lib._name).cudaMemcpyAsync
                fn.restype, fn.argtypes = ctypes.c_int, cuda._SIGNATURES["cudaMemcpyAsync"]
                self._held_copy = fn
            self._check(fn(dst, src, nbytes, cuda._H2D, stream), "copy to the GPU")

        cuda.CudaRuntime.copy_to_device = copy_to_device  # type: ignore[method-assign]
    if os.environ.get("TRTOP_GAPS_LAUNCH_FIRST") == "1":
        land = scheduler.Scheduler._land

        def land_first(self: Any, items: Any, rows: Any, done: Any, ticket: Any) -> None:
            if done.exception() is None:
                self._batch_finished(done)  # again inside land: it forgets a batch it no longer holds
                if self._queue:
                    self._kick()
            land(self, items, rows, done, ticket)

        scheduler.Scheduler._land = land_first  # type: ignore[method-assign]
    if (switch := os.environ.get("TRTOP_GAPS_SWITCH_S")):
        sys.setswitchinterval(float(switch))
    wrap(scheduler.Scheduler, "_launch", before="launch")
    wrap(scheduler.Scheduler, "_compute", before="thread", after="computed")
    wrap(scheduler.Scheduler, "_land", before="landed")
    wrap(onnxruntime_bind.DeviceCopier, "copy_rows", before="copy", after="copied")
    wrap(onnxruntime_bind.Bound, "_run", before="run", after="ran")


def _leave_out() -> None:
    """Patch the named parts of ``--slot-handoff on`` out before the server's modules read them."""
    if os.environ.get("TRTOP_GAPS_KEEP_SWITCH") == "1":
        from trtop.serve import runtime
        runtime.HANDOFF_SWITCH_S = sys.getswitchinterval()  # type: ignore[misc]
    if os.environ.get("TRTOP_GAPS_NO_WAIT") == "1":
        from trtop.serve.backends import onnxruntime_bind
        onnxruntime_bind.HANDOFF_S = 1e-9  # type: ignore[misc]
    if os.environ.get("TRTOP_GAPS_NO_LAND") == "1":
        from trtop.serve import scheduler
        init = scheduler.Scheduler.__init__

        def no_land(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["land_starts"] = False
            init(self, *args, **kwargs)

        scheduler.Scheduler.__init__ = no_land  # type: ignore[method-assign]


try:
    _leave_out()
    if _DIR:
        _install()
except ImportError:  # a process without the server's modules (a client, a tool)
    pass
