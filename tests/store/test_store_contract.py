"""The EngineStore contract, checked the same way on both backends (filesystem and a real S3 server)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from tests.store.conftest import make_engine_folder, make_record, race_publish
from trtop.api.engine import EngineKey
from trtop.store import EngineNotFoundError, EngineStore, InvalidRecordError, open_store
from trtop.store.integrity import IntegrityError
from trtop.store.filesystem import FilesystemStore
from trtop.store.s3 import S3Store

KEY = EngineKey("e-0123456789abcdef")


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> EngineStore:
    if request.param == "filesystem":
        return open_store(f"file://{tmp_path}/engines")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/team/engines")


def test_open_store_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), FilesystemStore)
    assert isinstance(open_store(f"file://{tmp_path}"), FilesystemStore)
    assert isinstance(open_store("s3://bucket/prefix"), S3Store)
    with pytest.raises(ValueError, match="scheme 'gs'"):
        open_store("gs://bucket/x")


def test_publish_then_read_back(store: EngineStore, tmp_path: Path) -> None:
    assert store.get_record(KEY) is None
    assert store.list_keys() == []
    assert store.publish(KEY, make_engine_folder(tmp_path, KEY)) is True
    record = store.get_record(KEY)
    assert record is not None and dataclasses.replace(record, folder="") == make_record(KEY)
    assert store.list_keys() == [KEY]
    local = store.fetch(KEY, tmp_path / "cache")
    assert local == tmp_path / "cache" / KEY
    assert (local / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (local / "extra" / "notes.txt").read_text() == "nested files travel too"
    assert (local / "engine.json").is_file()
    assert store.fetch(KEY, tmp_path / "cache") == local  # a second fetch reuses the local copy


def test_second_publish_of_a_key_changes_nothing(store: EngineStore, tmp_path: Path) -> None:
    assert store.publish(KEY, make_engine_folder(tmp_path, KEY, b"first")) is True
    assert store.publish(KEY, make_engine_folder(tmp_path, KEY, b"second")) is False
    assert (store.fetch(KEY, tmp_path / "c") / "model.onnx").read_bytes() == b"first"


def test_fetch_of_an_unpublished_key_says_so(store: EngineStore, tmp_path: Path) -> None:
    with pytest.raises(EngineNotFoundError, match=f"{KEY} is not published"):
        store.fetch(KEY, tmp_path / "c")


def test_delete_removes_the_engine(store: EngineStore, tmp_path: Path) -> None:
    other = EngineKey("e-ffffffffffffffff")
    store.publish(KEY, make_engine_folder(tmp_path, KEY))
    store.publish(other, make_engine_folder(tmp_path, other))
    store.delete(KEY)
    store.delete(KEY)  # deleting twice is fine (garbage collection may run twice)
    assert store.get_record(KEY) is None
    assert store.list_keys() == [other]
    assert store.publish(KEY, make_engine_folder(tmp_path, KEY, b"again")) is True


def test_blobs_round_trip_and_stay_out_of_the_key_list(store: EngineStore) -> None:
    assert store.get_blob("_timing-caches/sm90.cache") is None
    store.put_blob("_timing-caches/sm90.cache", b"cache-1")
    store.put_blob("_timing-caches/sm90.cache", b"cache-2")  # last writer wins
    assert store.get_blob("_timing-caches/sm90.cache") == b"cache-2"
    assert store.list_keys() == []


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", ""])
def test_blob_names_cannot_escape_the_store(store: EngineStore, name: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        store.put_blob(name, b"x")


def test_publish_needs_engine_json(store: EngineStore, tmp_path: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="no engine.json"):
        store.publish(KEY, folder)
    assert store.get_record(KEY) is None


def test_racing_builds_leave_one_engine_whose_bytes_match_its_record(store: EngineStore, tmp_path: Path) -> None:
    folders = [make_engine_folder(tmp_path, KEY, f"build-{i}".encode() * 5000) for i in range(4)]
    assert sorted(race_publish(store, KEY, folders)) == [False, False, False, True]
    record = store.get_record(KEY)
    assert record is not None
    local = store.fetch(KEY, tmp_path / "cache")
    data = (local / "model.onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == record.sha256 and len(data) == record.size


def test_publish_refuses_a_folder_whose_artifact_differs_from_its_record(store: EngineStore, tmp_path: Path) -> None:
    folder = make_engine_folder(tmp_path, KEY)
    (folder / "model.onnx").write_bytes(b"changed after the record was written")
    with pytest.raises(IntegrityError, match=f"engine {KEY}.*refusing"):
        store.publish(KEY, folder)
    assert store.get_record(KEY) is None


def test_publish_refuses_a_record_for_another_key(store: EngineStore, tmp_path: Path) -> None:
    folder = make_engine_folder(tmp_path, EngineKey("e-ffffffffffffffff"))
    with pytest.raises(InvalidRecordError, match="read from the location of"):
        store.publish(KEY, folder)


def test_publish_refuses_links(store: EngineStore, tmp_path: Path) -> None:
    folder = make_engine_folder(tmp_path, KEY)
    (folder / "token").symlink_to("/var/run/secrets/kubernetes.io/serviceaccount/token")
    with pytest.raises(IntegrityError, match="link"):
        store.publish(KEY, folder)


def test_a_malformed_record_is_a_clear_error_not_a_crash(store: EngineStore, tmp_path: Path) -> None:
    folder = make_engine_folder(tmp_path, KEY)
    doc = json.loads((folder / "engine.json").read_text())
    doc["parity"] = []
    _write_committed_record(store, KEY, json.dumps(doc).encode())
    with pytest.raises(InvalidRecordError, match="'parity' must be an object"):
        store.get_record(KEY)
    with pytest.raises(InvalidRecordError):
        store.fetch(KEY, tmp_path / "cache")


def _write_committed_record(store: EngineStore, key: EngineKey, body: bytes) -> None:
    """What a writer that bypasses publish (a tenant with store access) can leave behind."""
    if isinstance(store, FilesystemStore):
        (store.root / key).mkdir(parents=True, exist_ok=True)
        (store.root / key / "engine.json").write_bytes(body)
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(Bucket=store.bucket, Key=store._object(key, "engine.json"), Body=body)
