"""Store calls that give up after a timeout, for callers that must not hang on a store.

A store is a mount or an endpoint a tenant's build pods write to, and either can hang (a stuck
NFS server, a FIFO where a file should be, an endpoint that never answers). The operator's
record reads (``trtop.k8s.observe``) and its garbage collector (``trtop.store.gc``) run each
store call on a daemon thread of its own so that the call can be abandoned after its timeout: a
pool thread would stay taken by a call stuck for good (a hung NFS read cannot be interrupted)
and hold up other namespaces' reads, and the process's exit. While ``stuck_limit`` abandoned
calls on one store are still running, further calls on it fail at once instead of being given
more threads to lose.
"""
from __future__ import annotations

import concurrent.futures
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from trtop.store import StoreUnavailableError

T = TypeVar("T")
_stuck: dict[str, int] = defaultdict(int)  # store URI -> abandoned calls still running
_stuck_lock = threading.Lock()


class StoreTimeoutError(StoreUnavailableError):
    """A store call gave no answer within its timeout, or the store has calls stuck already."""


def bounded_call(store_uri: str, call: Callable[[], T], timeout_seconds: float, *, stuck_limit: int,
                 name: str = "trtop-store") -> T:
    """``call()`` (a call on the store ``store_uri``) within ``timeout_seconds``; StoreTimeoutError past it,
    and at once while ``stuck_limit`` earlier calls on that store have not returned."""
    with _stuck_lock:
        if _stuck[store_uri] >= stuck_limit:
            raise StoreTimeoutError(f"{_stuck[store_uri]} earlier call(s) have not returned yet")
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    abandoned = [False]

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as e:  # noqa: BLE001 - handed to the waiter, which decides
            future.set_exception(e)
        with _stuck_lock:
            if abandoned[0]:
                _stuck[store_uri] -= 1

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return future.result(timeout=timeout_seconds)
    except concurrent.futures.TimeoutError:
        with _stuck_lock:
            if not future.done():  # else it returned just now: not stuck
                abandoned[0] = True
                _stuck[store_uri] += 1
        if future.done():
            return future.result()
        raise StoreTimeoutError(f"no answer within {timeout_seconds:g}s (a hung mount or endpoint?)") from None
