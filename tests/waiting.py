"""Calls that must come back: a test of a timeout fails, rather than hangs the run, when one is missing."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


def call_within(seconds: float, call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """What ``call`` raised (None if it returned) and how long it took; the test fails if it is still
    running after ``seconds`` (it is left on a daemon thread)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            outcome.append(e)
    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds}s: a call without a bound"
    return outcome[0], time.monotonic() - started
