"""The operator's shutdown stops every background loop, even when one of them will not stop."""
from __future__ import annotations

import asyncio
import time

import pytest

from trtop.handlers import main


async def test_a_loop_that_does_not_stop_neither_holds_shutdown_nor_keeps_the_others_running(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stopped_cleanly: list[str] = []

    async def loop(name: str, stopped: asyncio.Event, obeys: bool) -> None:
        if obeys:
            await stopped.wait()
            stopped_cleanly.append(name)
        else:
            await asyncio.sleep(3600)

    monkeypatch.setattr(main, "STOP_SECONDS", 0.5)
    events = [asyncio.Event() for _ in range(3)]
    tasks = [asyncio.create_task(loop(name, ev, obeys)) for name, ev, obeys in
             (("workers", events[0], False), ("autoscaling", events[1], True), ("gc", events[2], True))]
    monkeypatch.setattr(main, "_background", list(zip(tasks, events)))
    started = time.monotonic()
    await main.on_cleanup_operator()
    assert time.monotonic() - started < 2.0
    assert all(ev.is_set() for ev in events)
    assert sorted(stopped_cleanly) == ["autoscaling", "gc"]  # (the old loop raised at the first, and stopped none)
    assert "did not stop cleanly" in caplog.text
    assert main._background == []
