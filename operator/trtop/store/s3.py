"""The engine store in an S3-compatible bucket: ``s3://bucket/prefix`` (AWS, MinIO, Ceph, GCS interop).

Credentials and endpoint come from the usual AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3``), which the chart fills from the store Secret.

S3 has no rename, so a key's ``engine.json`` is the commit: publish uploads the artifact
files first and ``engine.json`` last, with ``If-None-Match: *`` so that of two builds of
one key exactly one commits; readers ignore a key folder without ``engine.json``; delete
removes ``engine.json`` first. A build killed mid-upload leaves orphan objects under an
uncommitted key, which the next build of that key overwrites.

Used through ``trtop.store.open_store`` by the converter, the operator and the server;
``s3_client()`` is also used by the converter to fetch ``s3://`` models.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trtop import names
from trtop.api.engine import MAX_RECORD_BYTES, EngineKey, EngineRecord, RecordError, is_engine_key, parse_record
from trtop.store import EngineNotFoundError, InvalidRecordError, StoreError, StoreUnavailableError
from trtop.store.integrity import UPLOAD_FOLDER, IntegrityError, install_checked, regular_files, verify_artifact

_MISSING = {"404", "NoSuchKey", "NotFound"}
_LOST_RACE = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
_UNSUPPORTED = {"501", "NotImplemented"}
MAX_EXTRA_BYTES = 64 << 20  # files beside the artifact in one engine (notes, small side files)
MAX_OBJECTS = 10_000  # objects one engine may have


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (path-style on custom endpoints, for MinIO)."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    config = Config(
        retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=120,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class S3Store:
    """Engines as ``<prefix>/<key>/...`` objects; ``engine.json`` present = published."""

    def __init__(self, uri: str, client: Any = None) -> None:
        self.uri = uri
        self.bucket, self.prefix = split_s3_uri(uri)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    # -- reading ------------------------------------------------------------------------
    def get_record(self, key: EngineKey) -> EngineRecord | None:
        obj = self._object(key, names.ENGINE_METADATA_FILE)
        data = self._get(obj, limit=MAX_RECORD_BYTES)
        if data is None:
            return None
        try:
            return parse_record(data, key=key, where=f"s3://{self.bucket}/{obj}")
        except RecordError as exc:
            raise InvalidRecordError(f"{exc}. The engine is not used; delete s3://{self.bucket}/"
                                     f"{self._object(key, '')} to have it rebuilt") from None

    def list_keys(self) -> list[EngineKey]:
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        for obj, _ in self._list(base):
            folder, _, leaf = obj[len(base):].partition("/")
            if leaf == names.ENGINE_METADATA_FILE and is_engine_key(folder):
                keys.append(EngineKey(folder))
        return sorted(keys)

    def fetch(self, key: EngineKey, dest: Path) -> Path:
        record = self.get_record(key)
        if record is None:
            raise EngineNotFoundError(f"engine {key} is not published in {self.uri}")
        final = dest / key
        if (final / names.ENGINE_METADATA_FILE).is_file():
            return final  # fetched and checked before; the server checks the bytes again
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{key}-{uuid.uuid4().hex[:8]}"
        base = self._object(key, f"{record.folder}/" if record.folder else "")
        try:
            objects = self._committed_objects(record, base)
            with self._errors("download"):
                for obj, rel in objects:
                    target = tmp.joinpath(*rel.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(self.bucket, obj, str(target))
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / names.ENGINE_METADATA_FILE).write_text(dataclasses.replace(record, folder="").to_json())
            return install_checked(tmp, final, record, self.uri)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _committed_objects(self, record: EngineRecord, base: str) -> list[tuple[str, str]]:
        """(object, relative name) of the committed engine's files, each name checked, the total bounded."""
        out: list[tuple[str, str]] = []
        total = 0
        for obj, size in self._list(base):
            rel = obj[len(base):]
            first = rel.split("/", 1)[0]
            if rel == names.ENGINE_METADATA_FILE or rel.endswith("/") or (not record.folder and UPLOAD_FOLDER.match(first)):
                continue  # the record itself, folder markers, other builds' upload folders
            if any(part in ("", ".", "..") for part in rel.split("/")) or "\\" in rel:
                raise IntegrityError(f"engine {record.key} in {self.uri}: object name {obj!r} would leave the "
                                     "engine folder; refusing the engine")
            total += size
            out.append((obj, rel))
            if len(out) > MAX_OBJECTS or total > record.size + MAX_EXTRA_BYTES:
                raise IntegrityError(f"engine {record.key} in {self.uri}: more objects or bytes than its record "
                                     f"announces ({record.size} bytes of artifact); refusing the engine")
        return out

    def get_blob(self, name: str) -> bytes | None:
        return self._get(self._blob(name))

    # -- writing ------------------------------------------------------------------------
    def publish(self, key: EngineKey, folder: Path) -> bool:
        meta = folder / names.ENGINE_METADATA_FILE
        if not meta.is_file():
            raise ValueError(f"{folder} has no {names.ENGINE_METADATA_FILE}: nothing to publish")
        try:
            record = parse_record(meta.read_bytes(), key=key, where=str(meta))
        except RecordError as exc:
            raise InvalidRecordError(str(exc)) from None
        verify_artifact(folder, record, origin=f"the build folder {folder}")
        commit = self._object(key, names.ENGINE_METADATA_FILE)
        if self._exists(commit):
            return False
        upload = f"b-{uuid.uuid4().hex[:12]}"
        base = self._object(key, f"{upload}/")
        files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in regular_files(folder) if p != meta}
        try:
            with self._errors("upload"):
                for rel in sorted(files):
                    self.client.upload_file(str(folder / rel), self.bucket, base + rel)
            uploaded = {obj[len(base):]: size for obj, size in self._list(base)}
            if uploaded != files:
                raise IntegrityError(f"engine {key}: the upload to {self.uri} is incomplete or changed "
                                     f"({len(uploaded)} of {len(files)} files as written); not committing it")
            committed = self._commit(commit, dataclasses.replace(record, folder=upload).to_json().encode())
        except BaseException:
            self._remove(base)
            raise
        if not committed:
            self._remove(base)  # another build of this key committed first: its engine stays
        return committed

    def _commit(self, commit: str, body: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=commit, Body=body, IfNoneMatch="*",
                                   ContentType="application/json")
        except Exception as e:  # botocore's ClientError; boto3 is imported lazily
            code = error_code(e)
            if code in _LOST_RACE:
                return False  # another build of this key committed first
            if code not in _UNSUPPORTED:
                raise self._unavailable("commit", e) from e
            # A server without conditional writes: check, then write (a narrow race remains).
            if self._exists(commit):
                return False
            with self._errors("commit"):
                self.client.put_object(Bucket=self.bucket, Key=commit, Body=body, ContentType="application/json")
        return True

    def _remove(self, prefix: str) -> None:
        """Best effort: delete every object under ``prefix`` (an abandoned upload folder)."""
        try:
            self._delete_objects([obj for obj, _ in self._list(prefix)])
        except StoreError:
            pass

    def delete(self, key: EngineKey) -> None:
        with self._errors("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key, names.ENGINE_METADATA_FILE))
        self._delete_objects([obj for obj, _ in self._list(self._object(key, ""))])

    def _delete_objects(self, objects: list[str]) -> None:
        with self._errors("delete"):
            for i in range(0, len(objects), 1000):
                batch = [{"Key": k} for k in objects[i:i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def put_blob(self, name: str, data: bytes) -> None:
        obj = self._blob(name)
        with self._errors("write"):
            self.client.put_object(Bucket=self.bucket, Key=obj, Body=data)

    def list_folders(self, prefix: str) -> list[str]:
        """Names of the "folders" right below ``<store prefix>/<prefix>`` (garbage collection)."""
        base = "/".join(p for p in (self.prefix, prefix.strip("/")) if p)
        base = f"{base}/" if base else ""
        out: list[str] = []
        with self._errors("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base, Delimiter="/")
            for page in pages:
                out += [str(p["Prefix"])[len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(out)

    def newest_object(self, key: EngineKey) -> float:
        """Last-modified time (epoch seconds) of the newest object under a key (0 when none)."""
        newest = 0.0
        with self._errors("list"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self._object(key, "")):
                for obj in page.get("Contents", []):
                    newest = max(newest, obj["LastModified"].timestamp())
        return newest

    # -- helpers ------------------------------------------------------------------------
    def _object(self, key: EngineKey, name: str) -> str:
        if not is_engine_key(key):
            raise ValueError(f"{key!r} is not an engine key")
        return "/".join(p for p in (self.prefix, key) if p) + "/" + name

    def _blob(self, name: str) -> str:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"blob name {name!r} must be a relative path without '..'")
        return "/".join(p for p in (self.prefix, name) if p)

    def _get(self, obj: str, limit: int | None = None) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=obj)
            body = response["Body"]
            data: bytes = body.read() if limit is None else body.read(limit + 1)
            body.close()
            return data
        except Exception as e:
            if error_code(e) in _MISSING:
                return None
            raise self._unavailable("read", e) from e

    def _exists(self, obj: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=obj)
            return True
        except Exception as e:
            if error_code(e) in _MISSING:
                return False
            raise self._unavailable("read", e) from e

    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(object name, size) of every object under ``prefix``."""
        with self._errors("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield str(obj["Key"]), int(obj.get("Size", 0))

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (StoreError, OSError, ValueError):
            raise
        except Exception as e:
            raise self._unavailable(action, e) from e

    def _unavailable(self, action: str, exc: BaseException) -> StoreUnavailableError:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        return StoreUnavailableError(
            f"engine store {self.uri} ({endpoint}): {action} failed: {exc}. "
            "Check the endpoint (AWS_ENDPOINT_URL), the bucket and the credentials (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY) in the store Secret."
        )
