"""S3 store specifics, against a real S3-compatible server (moto in server mode, over HTTP)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.store.conftest import make_engine_folder
from trtop.api.engine import EngineKey
from trtop.store import StoreUnavailableError
from trtop.store.integrity import IntegrityError
from trtop.store.s3 import UPLOAD_FOLDER, S3Store, s3_client, split_s3_uri

KEY = EngineKey("e-0123456789abcdef")


def test_split_s3_uri() -> None:
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    assert split_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(ValueError, match="names no bucket"):
        split_s3_uri("s3:///x")


def test_layout_is_prefix_key_file(s3_bucket: str, tmp_path: Path) -> None:
    store = S3Store(f"s3://{s3_bucket}/engines")
    store.publish(KEY, make_engine_folder(tmp_path, KEY))
    store.put_blob("_timing-caches/sm90.cache", b"c")
    listed = s3_client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    record = store.get_record(KEY)
    assert record is not None and UPLOAD_FOLDER.match(record.folder)  # the build's own upload folder
    assert sorted(o["Key"] for o in listed) == [
        "engines/_timing-caches/sm90.cache",
        f"engines/{KEY}/{record.folder}/extra/notes.txt",
        f"engines/{KEY}/{record.folder}/model.onnx",
        f"engines/{KEY}/engine.json",
    ]


def test_artifacts_without_engine_json_are_not_an_engine(s3_bucket: str, tmp_path: Path) -> None:
    """What a build killed mid-upload leaves: artifacts, no commit. Nobody sees it; the next build wins."""
    client = s3_client()
    client.put_object(Bucket=s3_bucket, Key=f"{KEY}/model.onnx", Body=b"partial")
    store = S3Store(f"s3://{s3_bucket}")
    assert store.get_record(KEY) is None
    assert store.list_keys() == []
    assert store.publish(KEY, make_engine_folder(tmp_path, KEY, b"complete")) is True
    assert (store.fetch(KEY, tmp_path / "c") / "model.onnx").read_bytes() == b"complete"


def test_commit_is_conditional_so_a_racing_build_loses(s3_bucket: str, tmp_path: Path) -> None:
    """Another build commits engine.json while ours uploads: our commit must not overwrite it."""
    store = S3Store(f"s3://{s3_bucket}")
    client = s3_client()
    winner = make_engine_folder(tmp_path, KEY, b"winner")
    original_upload = client.upload_file

    def upload_then_lose_the_race(*args: object, **kwargs: object) -> None:
        original_upload(*args, **kwargs)
        if not store._exists(f"{KEY}/engine.json"):
            client.put_object(Bucket=s3_bucket, Key=f"{KEY}/engine.json",
                              Body=(winner / "engine.json").read_bytes())

    client.upload_file = upload_then_lose_the_race  # type: ignore[method-assign]
    racing = S3Store(f"s3://{s3_bucket}", client=client)
    assert racing.publish(KEY, make_engine_folder(tmp_path, KEY, b"loser")) is False
    # The loser's uploads are gone, the winner's record is untouched.
    left = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert left == [f"{KEY}/engine.json"]


def published(s3_bucket: str, tmp_path: Path) -> tuple[S3Store, str]:
    store = S3Store(f"s3://{s3_bucket}/engines/team-a")
    assert store.publish(KEY, make_engine_folder(tmp_path, KEY, b"the built bytes"))
    record = store.get_record(KEY)
    assert record is not None
    return store, f"engines/team-a/{KEY}/{record.folder}/"


@pytest.mark.parametrize("name", ["../../escaped.txt", "../../../../../../tmp/escaped.txt", "a//b", "./x"])
def test_object_names_that_leave_the_engine_folder_are_refused(s3_bucket: str, tmp_path: Path, name: str) -> None:
    store, base = published(s3_bucket, tmp_path)
    s3_client().put_object(Bucket=s3_bucket, Key=base + name, Body=b"planted by a writer of the bucket")
    cache = tmp_path / "cache" / "engines"
    with pytest.raises(IntegrityError, match=f"engine {KEY} .*would leave the engine folder"):
        store.fetch(KEY, cache)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("escaped.txt"))
    assert written == [] and not (cache / KEY).exists()


def test_an_incomplete_engine_is_not_cached(s3_bucket: str, tmp_path: Path) -> None:
    store, base = published(s3_bucket, tmp_path)
    s3_client().delete_object(Bucket=s3_bucket, Key=base + "model.onnx")
    with pytest.raises(IntegrityError, match=f"engine {KEY} .*model.onnx is missing"):
        store.fetch(KEY, tmp_path / "cache")
    assert not (tmp_path / "cache" / KEY).exists()  # the next start tries again, no crash loop on a bad copy


def test_a_replaced_artifact_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    store, base = published(s3_bucket, tmp_path)
    s3_client().put_object(Bucket=s3_bucket, Key=base + "model.onnx", Body=b"other bytes, same name")
    with pytest.raises(IntegrityError, match=f"engine {KEY} .*record pins"):
        store.fetch(KEY, tmp_path / "cache")


def test_scopes_do_not_see_each_other(s3_bucket: str, tmp_path: Path) -> None:
    store, _ = published(s3_bucket, tmp_path)
    other = S3Store(f"s3://{s3_bucket}/engines/team-b")
    assert other.get_record(KEY) is None and other.list_keys() == []
    assert store.list_keys() == [KEY]


def test_unreachable_endpoint_is_a_store_unavailable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries: keep the test fast
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:9.*AWS_ENDPOINT_URL"):
        S3Store("s3://bucket/engines").get_record(KEY)


def test_missing_bucket_is_reported(s3_env: str) -> None:
    with pytest.raises(StoreUnavailableError, match="NoSuchBucket"):
        S3Store("s3://no-such-bucket-here/x").list_keys()
