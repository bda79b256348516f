"""Garbage collection: unreferenced engines go after the grace period, referenced ones stay (both backends)."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.store.conftest import make_engine_folder, make_record
from tests.waiting import call_within
from trtop import names
from trtop.api.engine import EngineKey
from trtop.config import Settings
from trtop.store import gc as gc_module
from trtop.store import open_store, scoped_uri
from trtop.store.filesystem import FilesystemStore
from trtop.store.gc import Collector, GcReport, describe, list_scopes, references_from

DAY = 86400.0
CREATED = "2026-12-01T00:00:00Z"
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()  # CREATED as epoch seconds
USED, OLD, FRESH, PODS = (EngineKey(f"e-{c * 16}") for c in "abcd")


@pytest.fixture(params=["filesystem", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "filesystem":
        return str(tmp_path / "engines")
    return f"s3://{request.getfixturevalue('s3_bucket')}/engines"


def publish(root: str, scope: str, key: EngineKey, tmp_path: Path, created: str = CREATED) -> None:
    folder = make_engine_folder(tmp_path, key)
    record = dataclasses.replace(make_record(key), created=created)
    (folder / names.ENGINE_METADATA_FILE).write_text(record.to_json())
    assert open_store(scoped_uri(root, scope)).publish(key, folder)


def md(namespace: str, engines=(), served=(), previous=()) -> dict:
    return {"metadata": {"namespace": namespace, "name": "m"},
            "status": {"engines": [{"key": k} for k in engines], "servedEngines": list(served),
                       "previousEngines": list(previous)}}


def serving_pod(namespace: str, keys) -> dict:
    engine_set = json.dumps([{"key": k, "target": {"cc": "cpu"}} for k in keys])
    return {"metadata": {"namespace": namespace},
            "spec": {"containers": [{"env": [{"name": names.ENV_ENGINE_SET, "value": engine_set}]}]}}


def test_references_come_from_status_deployments_pods_and_jobs() -> None:
    settings = Settings(store_sharing={"ml": ("team-b", "team-c")})
    refs = references_from(
        settings, [md("team-a", engines=["e-1"], served=["e-2"], previous=["e-3"])],
        pods=[serving_pod("team-b", ["e-4"])],
        deployments=[{"metadata": {"namespace": "team-c", "annotations": {names.ANNOTATION_ENGINE_KEYS: "e-5,e-6"}}}],
        jobs=[{"metadata": {"namespace": "team-a", "labels": {names.LABEL_ENGINE_KEY: "e-7"}}}])
    assert refs == {"team-a": {"e-1", "e-2", "e-3", "e-7"}, "shared.ml": {"e-4", "e-5", "e-6"}}


def test_unreferenced_engines_go_after_the_grace_period_and_referenced_ones_stay(root: str, tmp_path: Path) -> None:
    for key in (USED, OLD, PODS):
        publish(root, "team-a", key, tmp_path)
    publish(root, "team-a", FRESH, tmp_path, created="2026-12-02T12:00:00Z")  # published after the first sweep
    publish(root, "team-b", OLD, tmp_path)  # another namespace's engine of the same key name: its own fate
    refs = references_from(Settings(), [md("team-a", engines=[USED])], pods=[serving_pod("team-a", [PODS])])
    clock = [T0 + DAY + 60]
    collector = Collector(root, DAY, clock=lambda: clock[0])
    first = collector.sweep(refs)
    assert first.deleted == [] and first.kept == 2  # seen unreferenced only now: wait a grace period
    assert sorted(first.waiting) == sorted([("team-a", FRESH), ("team-a", OLD), ("team-b", OLD)])
    clock[0] += DAY
    second = collector.sweep(refs)
    assert sorted(second.deleted) == [("team-a", OLD), ("team-b", OLD)]
    assert second.waiting == [("team-a", FRESH)]  # published less than a grace period ago
    team_a = open_store(scoped_uri(root, "team-a"))
    assert team_a.list_keys() == sorted([USED, FRESH, PODS])
    assert open_store(scoped_uri(root, "team-b")).list_keys() == []
    assert "deleted team-a/e-bbbbbbbbbbbbbbbb" in describe(second, dry_run=False)


def test_an_engine_referenced_again_restarts_its_grace_period(root: str, tmp_path: Path) -> None:
    publish(root, "team-a", OLD, tmp_path)
    clock = [T0 + 2 * DAY]
    collector = Collector(root, DAY, clock=lambda: clock[0])
    collector.sweep({})
    clock[0] += DAY / 2
    collector.sweep({"team-a": {OLD}})  # a ModelDeployment uses it again
    clock[0] += DAY / 2 + 1
    assert collector.sweep({}).deleted == []  # unreferenced for half a day only


def test_dry_run_deletes_nothing_and_scopes_limit_the_sweep(root: str, tmp_path: Path) -> None:
    publish(root, "team-a", OLD, tmp_path)
    publish(root, "team-b", OLD, tmp_path)
    assert list_scopes(root) == ["team-a", "team-b"]
    once = Collector(root, DAY, clock=lambda: T0 + 2 * DAY, require_seen_twice=False)
    report = once.sweep({}, dry_run=True)
    assert sorted(report.deleted) == [("team-a", OLD), ("team-b", OLD)]
    assert "would delete team-a/e-bbbbbbbbbbbbbbbb" in describe(report, dry_run=True)
    assert open_store(scoped_uri(root, "team-a")).list_keys() == [OLD]
    assert once.sweep({}, scopes=["team-b"]).deleted == [("team-b", OLD)]  # a namespaced operator's reach
    assert open_store(scoped_uri(root, "team-a")).list_keys() == [OLD]


def test_abandoned_s3_uploads_are_swept(s3_bucket: str, tmp_path: Path) -> None:
    from trtop.store.s3 import s3_client

    root = f"s3://{s3_bucket}/engines"
    publish(root, "team-a", USED, tmp_path)
    s3_client().put_object(Bucket=s3_bucket, Key=f"engines/team-a/{OLD}/b-0123456789ab/model.onnx", Body=b"half")
    collector = Collector(root, DAY, clock=lambda: 4102444800.0)  # 2100: the upload is long abandoned
    report = collector.sweep({"team-a": {USED}})
    assert report.swept_uploads == 1
    left = [o["Key"] for o in s3_client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert all(USED in k for k in left)


def test_a_namespaced_operator_sweeps_only_scopes_it_sees_whole() -> None:
    from trtop.handlers.gc import served_scopes

    settings = Settings(namespaces=("team-a", "team-b"), store_sharing={"ml": ("team-b", "team-c"), "cv": ("team-a",)})
    assert served_scopes(settings) == ["shared.cv"]  # shared.ml also has team-c, which it cannot see
    assert served_scopes(Settings(namespaces=("team-a",))) == ["team-a"]
    assert served_scopes(Settings()) is None  # cluster-wide: every scope


def test_a_record_is_known_per_scope_and_forgotten_once_its_engine_is_collected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator kept Ready records by key alone and for good: a key read from one namespace's scope was taken as
    every scope's (each holds its own copy, written by its own build pods), and once the collector deleted an engine
    its key stayed Ready in memory, so no build ran when it was wanted again and its pods pointed at nothing."""
    from trtop.handlers import facts, gc

    monkeypatch.setattr(facts, "READY_RECORDS", {})
    root = str(tmp_path / "engines")
    publish(root, "team-a", OLD, tmp_path / "a")
    settings = Settings(store_uri=root)
    assert OLD in facts.known_records((OLD,), settings, "team-a")[0]
    assert facts.known_records((OLD,), settings, "team-b")[0] == {}  # team-b's scope has no such engine
    monkeypatch.setattr(gc, "gather_references", lambda settings: {})
    monkeypatch.setattr(gc, "_post_namespace_event", lambda *args: None)
    report = gc.gc_once(settings, Collector(root, 0.0, require_seen_twice=False))
    assert report.deleted == [("team-a", OLD)]
    assert facts.known_records((OLD,), settings, "team-a")[0] == {}  # read again: gone, so it is built again


class _HungStore(FilesystemStore):
    """A scope on a mount that stopped answering: listing it blocks until ``released``."""
    released = threading.Event()

    def list_keys(self) -> list[EngineKey]:
        self.released.wait()
        return super().list_keys()


def test_a_hung_store_call_costs_its_scope_an_error_and_the_round_still_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "engines")
    publish(root, "team-a", OLD, tmp_path)
    publish(root, "team-h", OLD, tmp_path)
    monkeypatch.setattr(gc_module, "open_store",
                        lambda uri: _HungStore(uri) if uri.endswith("/team-h") else open_store(uri))
    monkeypatch.setattr(_HungStore, "released", threading.Event())
    collector = Collector(root, DAY, clock=lambda: T0 + 2 * DAY, require_seen_twice=False, call_timeout=0.3)
    try:
        report, elapsed = _sweep_within(5, collector)  # the old code waited on the mount for good
        assert report.deleted == [("team-a", OLD)]  # the other scope's sweep went on
        assert report.errors == [f"team-h: engine store {root}: no answer within 0.3s (a hung mount or endpoint?)"]
        publish(root, "team-a", FRESH, tmp_path)
        threads = threading.active_count()
        again, _ = _sweep_within(5, collector)  # while a call is stuck, the store is: the next round skips it
        assert again.deleted == [] and again.errors == [
            f"listing the scopes: engine store {root}: 1 earlier call(s) have not returned yet"]
        assert threading.active_count() <= threads  # no second thread lost to the mount (a count, not a clock)
    finally:
        _HungStore.released.set()
    deadline = time.monotonic() + 5
    while collector.sweep({}).errors and time.monotonic() < deadline:  # the abandoned call returns
        time.sleep(0.05)
    assert [open_store(scoped_uri(root, s)).list_keys() for s in ("team-a", "team-h")] == [[], []]  # back: swept


def _sweep_within(seconds: float, collector: Collector) -> tuple[GcReport, float]:
    reports: list[GcReport] = []
    error, elapsed = call_within(seconds, lambda: reports.append(collector.sweep({})))
    assert error is None, repr(error)
    return reports[0], elapsed
