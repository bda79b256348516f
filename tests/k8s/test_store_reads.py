"""The operator's store reads: one namespace's hostile or hung store cannot stop another's reads.

A build pod (tenant code) writes its key's folder, so it can plant a FIFO as ``engine.json``;
a mount can hang. Either must cost only that namespace's reads (``StoreUnavailable`` there),
never the shared threads every other namespace's reconciles read through.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tests.store.conftest import make_engine_folder
from trtop.api.engine import EngineKey, EngineRecord
from trtop.k8s import observe
from trtop.store import open_store, scoped_uri
from trtop.store.filesystem import FilesystemStore

VICTIM_KEY = EngineKey("e-" + "b" * 16)


def _published(root: Path, scope: str) -> str:
    uri = scoped_uri(str(root), scope)
    assert open_store(uri).publish(VICTIM_KEY, make_engine_folder(root.parent / "built", VICTIM_KEY))
    return uri


def test_fifo_records_are_refused_at_once_and_other_namespaces_still_read(tmp_path: Path) -> None:
    root = tmp_path / "engines"
    victim = open_store(_published(root, "team-b"))
    attacker = open_store(scoped_uri(str(root), "team-a"))
    fifos = []
    try:
        for c in "012345":  # more than any pool of threads the reads could share
            key = EngineKey("e-" + c * 16)
            (root / "team-a" / key).mkdir(parents=True)
            fifos.append(root / "team-a" / key / "engine.json")
            os.mkfifo(fifos[-1])
            started = time.monotonic()
            found, error = observe.read_records(attacker, [key], 2.0)
            assert found == {} and f"{fifos[-1]} is not a regular file" in error
            assert time.monotonic() - started < 1.0  # refused, not waited out
        found, error = observe.read_records(victim, [VICTIM_KEY], 2.0)
        assert error == "" and found[VICTIM_KEY].key == VICTIM_KEY
    finally:
        for fifo in fifos:  # a reader stuck on one (the defect) gets its end of file
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


class _HungStore(FilesystemStore):
    """A store on a mount that stopped answering: every read blocks until ``released``."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.released = threading.Event()

    def get_record(self, key: EngineKey) -> EngineRecord | None:
        self.released.wait()
        return None


def test_reads_stuck_for_good_neither_starve_other_namespaces_nor_pile_up(tmp_path: Path) -> None:
    hung = _HungStore(f"file://{tmp_path}/hung-{time.monotonic_ns()}")
    victim = open_store(_published(tmp_path / "engines", "team-b"))
    threads_before = threading.active_count()
    try:
        waited, errors = [], []
        for i in range(8):
            started = time.monotonic()
            found, error = observe.read_records(hung, [EngineKey(f"e-{i:016x}")], 0.3)
            waited.append(time.monotonic() - started)
            errors.append(error)
            assert found == {} and f"engine store {hung.uri} unreadable" in error
            found, error = observe.read_records(victim, [VICTIM_KEY], 2.0)
            assert error == "" and VICTIM_KEY in found
        stuck = observe.STUCK_READS_PER_STORE
        assert all(w >= 0.3 and "no answer within 0.3s" in e for w, e in zip(waited[:stuck], errors))  # waited out
        assert all(w < 0.2 and f"{stuck} earlier call(s) have not returned" in e  # ... then no thread to lose
                   for w, e in zip(waited[stuck:], errors[stuck:]))
        assert threading.active_count() <= threads_before + stuck
    finally:
        hung.released.set()
    deadline = time.monotonic() + 5
    while observe.read_records(hung, [EngineKey("e-" + "f" * 16)], 0.3)[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert observe.read_records(hung, [EngineKey("e-" + "f" * 16)], 0.3) == ({}, "")  # the mount is back
