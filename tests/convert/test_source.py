"""Fetching models from every scheme against real local servers, and the digest that pins them."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtop.api.fetch import FetchPolicy
from trtop.convert import errors, source
from trtop.convert.guard import PERMISSIVE
from trtop.convert.source import check_digest, digest_of, fetch, fetch_model

OBJECTS: dict[str, bytes] = {}  # path -> body, served by the test HTTP server
GCS: dict[str, dict[str, bytes]] = {"models": {"resnet/saved_model.pb": b"pb", "resnet/variables/v.index": b"ix",
                                               "single.onnx": b"onnx-bytes"}}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        body: bytes | None = OBJECTS.get(url.path)
        if url.path.startswith("/storage/v1/b/"):  # the GCS JSON API
            if self.headers.get("Authorization") != "Bearer test-token":
                return self._send(401, b"{}")
            bucket, _, rest = url.path[len("/storage/v1/b/"):].partition("/o")
            objects = GCS.get(bucket, {})
            if rest.startswith("/") and query.get("alt") == ["media"]:
                body = objects.get(urllib.parse.unquote(rest[1:]))
            elif rest == "":
                prefix = query.get("prefix", [""])[0]
                body = json.dumps({"items": [{"name": n} for n in objects if n.startswith(prefix)]}).encode()
        if body is None:
            return self._send(404, b"not found")
        self._send(200, body)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "RETRY_DELAYS", (0.0, 0.0))


def make_tree(root: Path) -> Path:
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    return root


# --- digest ------------------------------------------------------------------------------------
def test_file_digest_is_sha256sum(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"abc")
    assert digest_of(tmp_path / "m.onnx") == \
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_folder_digest_depends_on_names_and_contents_only(tmp_path: Path) -> None:
    a = digest_of(make_tree(tmp_path / "a"))
    assert a == digest_of(make_tree(tmp_path / "b"))  # another place, same tree
    (tmp_path / "b" / "variables" / "variables.index").write_bytes(b"other")
    assert digest_of(tmp_path / "b") != a
    make_tree(tmp_path / "c")
    (tmp_path / "c" / "saved_model.pb").rename(tmp_path / "c" / "renamed.pb")
    assert digest_of(tmp_path / "c") != a


@pytest.mark.parametrize("pinned, error", [
    ("sha256:" + "f" * 64, errors.DigestMismatchError),
    ("md5:abc", errors.BadRequestError),
])
def test_check_digest(tmp_path: Path, pinned: str, error: type[Exception]) -> None:
    check_digest("sha256:" + "a" * 64, None, "m")  # nothing pinned: anything goes
    check_digest("sha256:" + "a" * 64, "sha256:" + "A" * 64, "m")  # hex case does not matter
    with pytest.raises(error):
        check_digest("sha256:" + "a" * 64, pinned, "s3://b/m")


# --- local ---------------------------------------------------------------------------------------
def test_local_paths_are_copied_into_the_work_folder(tmp_path: Path) -> None:
    """Not used in place any more: a PVC may change under the build (test_source_snapshot.py)."""
    tree = make_tree(tmp_path / "my model")
    for uri in (str(tree), "file://" + urllib.parse.quote(str(tree))):
        local = fetch(uri, tmp_path / "work")
        assert local != tree and local.name == "my model"
        assert local.resolve().is_relative_to((tmp_path / "work" / "source").resolve())
        assert digest_of(local) == digest_of(tree)


def test_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(errors.BadRequestError, match="scheme 'ftp'"):
        fetch("ftp://host/m.onnx", tmp_path)


# --- https ---------------------------------------------------------------------------------------
def test_https_file_and_archive(http_base: str, tmp_path: Path) -> None:
    OBJECTS["/m.onnx"] = b"onnx"
    assert fetch(f"{http_base}/m.onnx", tmp_path / "w1").read_bytes() == b"onnx"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(make_tree(tmp_path / "src" / "saved_model"), arcname="saved_model")
    OBJECTS["/sm.tar.gz"] = buffer.getvalue()
    folder = fetch(f"{http_base}/sm.tar.gz", tmp_path / "w2")
    assert folder.name == "saved_model" and (folder / "variables" / "variables.index").read_bytes() == b"index"


def test_http_404_is_a_user_error(http_base: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="HTTP 404") as e:
        fetch(f"{http_base}/missing.onnx", tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR


def test_unreachable_host_is_an_infrastructure_error_after_retries(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(errors.NetworkError, match="cannot reach the host.*refused") as e:
        fetch("https://127.0.0.1:9/model.onnx", tmp_path)
    assert e.value.exit_code == errors.EXIT_INFRA_ERROR
    assert sum("retrying" in r.message for r in caplog.records) == 2


def test_corrupt_archive(http_base: str, tmp_path: Path) -> None:
    OBJECTS["/bad.tgz"] = b"not gzip"
    with pytest.raises(errors.ModelFormatError, match="not a readable archive"):
        fetch(f"{http_base}/bad.tgz", tmp_path)


# --- s3 ------------------------------------------------------------------------------------------
@pytest.fixture
def s3_models(s3_env: str) -> str:
    from trtop.store.s3 import s3_client

    client = s3_client()
    client.create_bucket(Bucket="models")
    client.put_object(Bucket="models", Key="team/resnet/saved_model.pb", Body=b"pb")
    client.put_object(Bucket="models", Key="team/resnet/variables/variables.index", Body=b"ix")
    client.put_object(Bucket="models", Key="team/single.onnx", Body=b"onnx")
    return "models"


def test_s3_object_and_prefix(s3_models: str, tmp_path: Path) -> None:
    assert fetch("s3://models/team/single.onnx", tmp_path / "a").read_bytes() == b"onnx"
    folder = fetch("s3://models/team/resnet", tmp_path / "b")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "saved_model.pb", "variables/variables.index"]


def test_an_s3_object_that_grew_after_its_size_was_checked_is_cut_at_the_cap(
        s3_models: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HEAD (or the listing) said small; the object was replaced by a large one before the GET (a tenant writing
    to its bucket): boto3's download_file took all of it. What arrives is counted against maxBytes now."""
    from trtop.store.s3 import s3_client

    client = s3_client()
    client.put_object(Bucket="models", Key="team/grows.onnx", Body=b"x" * 5000)
    client.put_object(Bucket="models", Key="team/grows/a.bin", Body=b"y" * 5000)
    real_head, real_list = client.head_object, client.get_paginator

    def head(**kw: object) -> dict:
        return {**real_head(**kw), "ContentLength": 10}  # what it was when HEAD asked

    class Paginator:
        def paginate(self, **kw: object) -> object:
            for page in real_list("list_objects_v2").paginate(**kw):
                yield {**page, "Contents": [{**o, "Size": 10} for o in page.get("Contents", [])]}

    monkeypatch.setattr(client, "head_object", head)
    monkeypatch.setattr(client, "get_paginator", lambda _: Paginator())
    monkeypatch.setattr("trtop.store.s3.s3_client", lambda: client)
    policy = FetchPolicy(max_bytes=1000)
    for uri in ("s3://models/team/grows.onnx", "s3://models/team/grows"):
        with pytest.raises(errors.TooLargeError, match="more than the 1000 bytes left"):
            fetch(uri, tmp_path / uri.rsplit("/", 1)[1], policy)


def test_s3_missing_is_a_user_error(s3_models: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="no object and no objects under it"):
        fetch("s3://models/team/nothing", tmp_path)
    with pytest.raises(errors.ModelNotFoundError, match="NoSuchBucket"):
        fetch("s3://no-such-bucket/x", tmp_path)


def test_s3_unreachable_endpoint_is_infra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr("trtop.store.s3.s3_client", _no_retry_client)
    with pytest.raises(errors.NetworkError, match=r"cannot read from http://127\.0\.0\.1:9"):
        fetch("s3://models/m.onnx", tmp_path)


def _no_retry_client() -> object:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url="http://127.0.0.1:9",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=1))


# --- gs ------------------------------------------------------------------------------------------
def test_gcs_object_and_prefix(http_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", http_base)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "test-token")
    assert fetch("gs://models/single.onnx", tmp_path / "a").read_bytes() == b"onnx-bytes"
    folder = fetch("gs://models/resnet", tmp_path / "b")
    assert (folder / "variables" / "v.index").read_bytes() == b"ix"
    with pytest.raises(errors.ModelNotFoundError, match="no object and no objects under it"):
        fetch("gs://models/other", tmp_path / "c")


def test_gcs_without_credentials_says_how_to_give_them(http_base: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", http_base)
    monkeypatch.delenv("GOOGLE_OAUTH_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(errors.ModelNotFoundError, match="HTTP 401.*set GOOGLE_OAUTH_ACCESS_TOKEN"):
        fetch("gs://models/single.onnx", tmp_path)


def test_an_archive_is_pinned_by_its_own_bytes_and_checked_before_it_is_opened(
        http_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest of a fetched archive is what ``sha256sum`` prints for it (it was the unpacked
    folder's, so pinning the archive's sha256sum always failed), and a wrong pin refuses the
    archive before anything parses it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(make_tree(tmp_path / "tree"), arcname="saved_model")
    archive = buf.getvalue()
    monkeypatch.setitem(OBJECTS, "/pinned.tgz", archive)
    pinned = "sha256:" + hashlib.sha256(archive).hexdigest()
    local, digest = fetch_model(f"{http_base}/pinned.tgz", tmp_path / "ok", PERMISSIVE, pinned)
    assert digest == pinned and (local / "saved_model.pb").read_bytes() == b"graph"
    with pytest.raises(errors.DigestMismatchError):
        fetch_model(f"{http_base}/pinned.tgz", tmp_path / "bad", PERMISSIVE, "sha256:" + "0" * 64)
    assert not (tmp_path / "bad" / "source" / "unpacked").exists()  # never opened
