"""Filesystem store specifics: the record as commit, killed builds, racing builds, file:// URIs."""
from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.store.conftest import make_engine_folder, race_publish
from tests.waiting import call_within
from trtop.api.engine import EngineKey
from trtop.store import InvalidRecordError, open_store, scoped_uri
from trtop.store.filesystem import BESIDE_ARTIFACT_BYTES, FilesystemStore, make_folders, read_regular, root_of
from trtop.store.integrity import IntegrityError

KEY = EngineKey("e-0123456789abcdef")


def test_root_of_accepts_paths_and_file_uris() -> None:
    assert root_of("/data/engines") == Path("/data/engines")
    assert root_of("file:///data/my%20engines") == Path("/data/my engines")
    with pytest.raises(ValueError, match="local path"):
        root_of("file://otherhost/data")


def test_a_killed_build_leaves_no_visible_engine(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    # What a build killed during publish leaves behind: a half-copied upload folder in the
    # key's folder, and no engine.json.
    (tmp_path / KEY / "b-000000000dead").mkdir(parents=True)
    (tmp_path / KEY / "b-000000000dead" / "model.onnx").write_bytes(b"half")
    assert store.get_record(KEY) is None
    assert store.list_keys() == []
    assert store.publish(KEY, make_engine_folder(tmp_path / "b", KEY)) is True
    assert store.list_keys() == [KEY]
    fetched = store.fetch(KEY, tmp_path / "cache")
    assert (fetched / "model.onnx").read_bytes() != b"half"
    assert not any(p.name.startswith("b-") for p in fetched.iterdir())  # not the dead build's folder


def test_stale_upload_folders_of_the_key_are_swept(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    old = tmp_path / KEY / "b-00000000001d"
    fresh = tmp_path / KEY / "b-00000000002e"
    old.mkdir(parents=True)
    fresh.mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    store.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    assert not old.exists()
    assert fresh.exists()  # a build of the same key in progress is left alone


def test_racing_builds_of_one_key_publish_exactly_once(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "engines"))
    folders = [make_engine_folder(tmp_path / "b", KEY, f"build-{i}".encode() * 1000) for i in range(8)]
    assert sorted(race_publish(store, KEY, folders)) == [False] * 7 + [True]
    record = store.get_record(KEY)
    assert record is not None
    payload = (tmp_path / "engines" / KEY / record.folder / "model.onnx").read_bytes()
    assert payload in {f"build-{i}".encode() * 1000 for i in range(8)}  # one whole build, not a mix
    assert [p.name for p in (tmp_path / "engines" / KEY).iterdir() if p.name != "engine.json"] == [record.folder]
    fetched = store.fetch(KEY, tmp_path / "cache")
    assert (fetched / "model.onnx").read_bytes() == payload


def test_a_committed_engine_is_never_overwritten(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    assert store.publish(KEY, make_engine_folder(tmp_path / "a", KEY, b"first")) is True
    committed = (tmp_path / KEY / "engine.json").read_bytes()
    assert store.publish(KEY, make_engine_folder(tmp_path / "b", KEY, b"second")) is False
    assert (tmp_path / KEY / "engine.json").read_bytes() == committed
    assert (store.fetch(KEY, tmp_path / "cache") / "model.onnx").read_bytes() == b"first"


def test_a_build_needs_write_access_to_its_key_folder_only(tmp_path: Path) -> None:
    """A build pod mounts ``<scope>/<key>`` alone (the rest of the scope is not there): publish works."""
    root = tmp_path / "scope"
    (root / KEY).mkdir(parents=True)  # the kubelet makes the sub-path folder
    root.chmod(0o555)  # nothing else in the scope can be written
    try:
        assert FilesystemStore(str(root)).publish(KEY, make_engine_folder(tmp_path / "b", KEY)) is True
    finally:
        root.chmod(0o755)
    assert FilesystemStore(str(root)).list_keys() == [KEY]


def test_engines_published_before_upload_folders_are_still_read(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "engines"))
    built = make_engine_folder(tmp_path / "b", KEY, b"legacy")
    shutil.copytree(built, tmp_path / "engines" / KEY)  # the old layout: files right in the key's folder
    assert (store.fetch(KEY, tmp_path / "cache") / "model.onnx").read_bytes() == b"legacy"


def test_key_names_cannot_escape_the_root(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    for bad in ("../x", ".staging", "_timing-caches", ""):
        with pytest.raises(ValueError, match="not an engine key"):
            store.get_record(EngineKey(bad))


def test_fetch_refuses_links_planted_in_a_stored_engine(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "engines"))
    store.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    record = store.get_record(KEY)
    assert record is not None
    (tmp_path / "engines" / KEY / record.folder / "secret").symlink_to("/etc/hostname")
    with pytest.raises(IntegrityError, match="link"):
        store.fetch(KEY, tmp_path / "cache")
    assert not (tmp_path / "cache" / KEY).exists()


def test_fetch_copies_no_more_than_the_record_pins(tmp_path: Path) -> None:
    """A committed artifact that a writer keeps growing (a build pod that did not stop) was
    copied to its end before the size check: the server's fetch could fill its disk."""
    store = FilesystemStore(str(tmp_path / "engines"))
    store.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    record = store.get_record(KEY)
    assert record is not None
    with open(tmp_path / "engines" / KEY / record.folder / record.artifact, "r+b") as f:
        f.truncate(256 << 20)  # (sparse: a quarter GiB that the copy would have written out)
    most = record.size + BESIDE_ARTIFACT_BYTES
    with pytest.raises(IntegrityError, match=f"holds more than {most} bytes, more than its record allows"):
        store.fetch(KEY, tmp_path / "cache")
    assert not (tmp_path / "cache" / KEY).exists() and list((tmp_path / "cache").iterdir()) == []


def test_scoped_stores_are_sub_folders(tmp_path: Path) -> None:
    a = open_store(scoped_uri(f"file://{tmp_path}", "team-a"))
    b = open_store(scoped_uri(str(tmp_path), "team-b"))
    a.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    assert (tmp_path / "team-a" / KEY / "engine.json").is_file()
    assert b.get_record(KEY) is None and b.list_keys() == []
    for bad in ("..", ".staging", "_timing-caches", "Team-A", "a/b", ""):
        with pytest.raises(ValueError, match="store scope"):
            scoped_uri(str(tmp_path), bad)


def test_make_folders_makes_the_builds_folders_and_refuses_paths_outside(tmp_path: Path) -> None:
    make_folders(tmp_path, ["team-a/e-0123456789abcdef", "team-a/_timing-caches"])
    assert (tmp_path / "team-a" / "e-0123456789abcdef").is_dir() and (tmp_path / "team-a" / "_timing-caches").is_dir()
    make_folders(tmp_path, ["team-a/e-0123456789abcdef"])  # again: nothing to do
    for bad in ("../x", "/etc/x", "team-a/../../x", ""):
        with pytest.raises(ValueError, match="inside the store"):
            make_folders(tmp_path, [bad])


def _error_as_another_user(fn: Callable[[], object]) -> str:
    """``fn()`` in a forked child as a user other than root (root may write anywhere): its error, or ""."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, the modules are loaded already
        os.close(read_end)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            fn()
            message = ""
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            message = f"{type(e).__name__}: {e}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def test_make_folders_says_what_to_do_with_a_folder_of_another_user() -> None:
    """A scope folder a kubelet made as root (0755): the operator's user cannot make the key's folder in it."""
    import tempfile

    with tempfile.TemporaryDirectory() as top:  # pytest's tmp_path is 0700: another user could not reach it
        root = Path(top)
        root.chmod(0o755)
        scope = root / "team-a"
        scope.mkdir(mode=0o755)
        if os.geteuid() != 0:
            scope.chmod(0o555)
        error = _error_as_another_user(lambda: make_folders(root, ["team-a/e-0123456789abcdef"]))
        assert error.startswith("PermissionError") and "not writable by the operator" in error, error
        assert "chown -R 1000:1000" in error and str(scope) in error
        assert not (scope / "e-0123456789abcdef").exists()


def _returns_within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised (None if it returned); a read still blocked after ``seconds`` fails the test."""
    return call_within(seconds, call)[0]


def _release(fifo: Path) -> None:
    """Give a reader stuck on ``fifo`` its end of file (no reader: nothing to do)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_planted_as_engine_json_is_refused_at_once(tmp_path: Path) -> None:
    # A build pod (tenant code) can leave anything in its key's folder; a FIFO would block a
    # plain open() until someone writes to it, that is forever.
    store = FilesystemStore(str(tmp_path / "engines"))
    fifo = tmp_path / "engines" / KEY / "engine.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    try:
        for read in (lambda: store.get_record(KEY), lambda: store.fetch(KEY, tmp_path / "cache")):
            error = _returns_within(2, read)
            assert isinstance(error, InvalidRecordError)
            assert str(fifo) in str(error) and "not a regular file" in str(error)
    finally:
        _release(fifo)


def test_special_files_and_links_are_refused_where_a_tenant_can_write(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path))
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        try:
            for name in ("fifo", "link", "sock"):
                error = _returns_within(2, lambda: read_regular(tmp_path / name))
                assert isinstance(error, IntegrityError) and str(tmp_path / name) in str(error)
            assert isinstance(_returns_within(2, lambda: store.get_blob("fifo")), IntegrityError)
        finally:
            _release(tmp_path / "fifo")
    (tmp_path / "plain").write_bytes(b"0123456789")
    assert read_regular(tmp_path / "plain", 4) == b"0123"


def test_fetch_refuses_an_upload_folder_that_is_a_link(tmp_path: Path) -> None:
    store = FilesystemStore(str(tmp_path / "engines"))
    store.publish(KEY, make_engine_folder(tmp_path / "b", KEY))
    record = store.get_record(KEY)
    assert record is not None
    upload = tmp_path / "engines" / KEY / record.folder
    shutil.move(upload, tmp_path / "elsewhere")
    upload.symlink_to(tmp_path / "elsewhere")  # the same bytes, reached through a link
    with pytest.raises(IntegrityError, match="not a folder"):
        store.fetch(KEY, tmp_path / "cache")
