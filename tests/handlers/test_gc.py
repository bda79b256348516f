"""The operator's GC loop: a round that fails (the API server down, refusing or silent, the store
hung) is logged and the next round runs; the loop's API calls never block the event loop kopf runs on."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import api_clients_at
from trtop.api.engine import EngineKey
from trtop.config import Settings
from trtop.handlers import gc
from trtop.k8s import peering

PEERED = peering.PeeringConfig(standalone=False, name="trtop", priority=1, own_id="me")


@pytest.fixture
def api_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A port the clients are pointed at (0.5 s API timeout); the test decides whether anything listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with api_clients_at(f"http://127.0.0.1:{sock.getsockname()[1]}", tmp_path, monkeypatch, 0.5):
        try:
            yield sock
        finally:
            sock.close()


@pytest.mark.parametrize(("config", "failure"), [
    (peering.PeeringConfig(), "Engine garbage collection round failed"),  # the round's listing: connection refused
    (PEERED, "Cannot reach the API server for the peering object trtop"),  # the peering read: connection refused
], ids=["listing", "peering"])
async def test_a_round_that_cannot_reach_the_api_server_is_logged_and_the_next_runs(
        api_port: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        config: peering.PeeringConfig, failure: str) -> None:
    monkeypatch.setattr(peering, "CONFIG", [config])  # nothing listens on api_port: every connection is refused
    started = gc.start(Settings(store_uri=str(tmp_path / "engines"), gc_interval_seconds=0.05))
    assert started is not None
    task, stopped = started
    deadline = time.monotonic() + 10
    while caplog.text.count(failure) < 3 and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not task.done(), task.exception()
    assert caplog.text.count(failure) >= 3 and "Connection refused" in caplog.text
    stopped.set()
    await asyncio.wait_for(task, 5)


async def test_a_silent_api_server_never_blocks_the_event_loop(
        api_port: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api_port.listen(64)  # connections are accepted by the kernel; no answer ever comes
    monkeypatch.setattr(peering, "CONFIG", [PEERED])
    started = gc.start(Settings(store_uri=str(tmp_path / "engines"), gc_interval_seconds=0.05))
    assert started is not None
    task, stopped = started
    ticks, begun = 0, time.monotonic()
    while time.monotonic() - begun < 1.0:  # the peering reads wait on the server all this time (0.5 s each)
        await asyncio.sleep(0.01)
        ticks += 1
    # the loop kept turning (~100 ticks; with the read on it, 1 or 2: it held the loop for the whole second);
    # the bound leaves room for a loaded machine's slow sleeps
    assert ticks > 10
    stopped.set()
    await asyncio.wait_for(task, 5)  # the read gives up within its timeout, and the loop ends


async def test_a_hung_store_fails_rounds_within_the_store_timeout_and_the_loop_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from trtop.store import gc as store_gc
    from trtop.store.filesystem import FilesystemStore

    released = threading.Event()

    class HungStore(FilesystemStore):  # a mount that stopped answering
        def list_keys(self) -> list[EngineKey]:
            released.wait()
            return super().list_keys()

    root = tmp_path / "engines"
    (root / "team-a").mkdir(parents=True)
    monkeypatch.setattr(peering, "CONFIG", [peering.PeeringConfig()])  # standalone: no API call
    monkeypatch.setattr(gc, "gather_references", lambda settings: {})
    monkeypatch.setattr(store_gc, "open_store", HungStore)
    started = gc.start(Settings(store_uri=str(root), gc_interval_seconds=0.05, store_timeout_seconds=0.3))
    assert started is not None
    task, stopped = started
    try:
        deadline = time.monotonic() + 10
        while caplog.text.count("have not returned yet") < 2 and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception()
        assert "team-a: engine store" in caplog.text and "no answer within 0.3s" in caplog.text  # the first round
        assert caplog.text.count("have not returned yet") >= 2  # later rounds ran, without a thread each to lose
        stopped.set()
        await asyncio.wait_for(task, 5)  # the old code's round waited on the mount for good: so did the loop
    finally:
        released.set()
