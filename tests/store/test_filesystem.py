"""Filesystem store specifics: atomic rename, killed builds, racing builds, file:// URIs."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.store.conftest import make_engine_folder, race_publish
from trtop.api.engine import EngineKey
from trtop.store import open_store, scoped_uri
from trtop.store.filesystem import STAGING_DIR, FilesystemStore, root_of
from trtop.store.integrity import IntegrityError

KEY = EngineKey("e-0123456789abcdef")


def test_root_of_accepts_paths_and_file_uris() -> None:
    assert root_of("/data/engines") == Path("/data/engines")
    assert root_of("file:///data/my%20engines") == Path("/data/my engines")
    with pytest.raises(ValueError, match="local path"):
        root_of("file://otherhost/data")


def test_a_killed_build_leaves_no_visible_engine(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    # What a build killed during publish leaves behind: a half-copied staging folder,
    # and a key folder without engine.json (e.g. made by hand).
    (tmp_path / STAGING_DIR / f"{KEY}-dead").mkdir(parents=True)
    (tmp_path / STAGING_DIR / f"{KEY}-dead" / "model.onnx").write_bytes(b"half")
    assert store.get_record(KEY) is None
    assert store.list_keys() == []
    assert store.publish(KEY, make_engine_folder(tmp_path / "b", KEY)) is True
    assert store.list_keys() == [KEY]


def test_stale_staging_folders_are_swept(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    old = tmp_path / STAGING_DIR / "e-old-dead"
    fresh = tmp_path / STAGING_DIR / "e-live-build"
    old.mkdir(parents=True)
    fresh.mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    store.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    assert not old.exists()
    assert fresh.exists()  # a build in progress elsewhere is left alone


def test_racing_builds_of_one_key_publish_exactly_once(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "engines"))
    folders = [make_engine_folder(tmp_path / "b", KEY, f"build-{i}".encode() * 1000) for i in range(8)]
    assert sorted(race_publish(store, KEY, folders)) == [False] * 7 + [True]
    payload = (tmp_path / "engines" / KEY / "model.onnx").read_bytes()
    assert payload in {f"build-{i}".encode() * 1000 for i in range(8)}  # one whole build, not a mix
    assert list((tmp_path / "engines" / STAGING_DIR).iterdir()) == []  # losers cleaned up


def test_key_names_cannot_escape_the_root(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    for bad in ("../x", ".staging", "_timing-caches", ""):
        with pytest.raises(ValueError, match="not an engine key"):
            store.get_record(EngineKey(bad))


def test_fetch_refuses_links_planted_in_a_stored_engine(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "engines"))
    store.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    (tmp_path / "engines" / KEY / "secret").symlink_to("/etc/hostname")
    with pytest.raises(IntegrityError, match="link"):
        store.fetch(KEY, tmp_path / "cache")
    assert not (tmp_path / "cache" / KEY).exists()


def test_scoped_stores_are_sub_folders(tmp_path: Path) -> None:
    a = open_store(scoped_uri(f"file://{tmp_path}", "team-a"))
    b = open_store(scoped_uri(str(tmp_path), "team-b"))
    a.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    assert (tmp_path / "team-a" / KEY / "engine.json").is_file()
    assert b.get_record(KEY) is None and b.list_keys() == []
    for bad in ("..", ".staging", "_timing-caches", "Team-A", "a/b", ""):
        with pytest.raises(ValueError, match="store scope"):
            scoped_uri(str(tmp_path), bad)
