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

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trtop import names
from trtop.api.engine import EngineKey, EngineRecord
from trtop.store import EngineNotFoundError, StoreUnavailableError

_MISSING = {"404", "NoSuchKey", "NotFound"}
_LOST_RACE = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
_UNSUPPORTED = {"501", "NotImplemented"}


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
        data = self._get(self._object(key, names.ENGINE_METADATA_FILE))
        return None if data is None else EngineRecord.from_json(data.decode("utf-8"))

    def list_keys(self) -> list[EngineKey]:
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        for obj in self._list(base):
            rest = obj[len(base):]
            folder, _, leaf = rest.partition("/")
            if leaf == names.ENGINE_METADATA_FILE and folder and not folder.startswith((".", "_")):
                keys.append(EngineKey(folder))
        return sorted(keys)

    def fetch(self, key: EngineKey, dest: Path) -> Path:
        meta = self._get(self._object(key, names.ENGINE_METADATA_FILE))
        if meta is None:
            raise EngineNotFoundError(f"engine {key} is not published in {self.uri}")
        final = dest / key
        if (final / names.ENGINE_METADATA_FILE).is_file():
            return final
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{key}-{uuid.uuid4().hex[:8]}"
        base = self._object(key, "")
        try:
            with self._errors("download"):
                for obj in self._list(base):
                    rel = obj[len(base):]
                    if rel == names.ENGINE_METADATA_FILE or not rel or rel.endswith("/"):
                        continue
                    target = tmp.joinpath(*rel.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(self.bucket, obj, str(target))
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / names.ENGINE_METADATA_FILE).write_bytes(meta)
            os.rename(tmp, final)
        except OSError:
            if not (final / names.ENGINE_METADATA_FILE).is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def get_blob(self, name: str) -> bytes | None:
        return self._get(self._blob(name))

    # -- writing ------------------------------------------------------------------------
    def publish(self, key: EngineKey, folder: Path) -> bool:
        meta = folder / names.ENGINE_METADATA_FILE
        if not meta.is_file():
            raise ValueError(f"{folder} has no {names.ENGINE_METADATA_FILE}: nothing to publish")
        commit = self._object(key, names.ENGINE_METADATA_FILE)
        if self._exists(commit):
            return False
        with self._errors("upload"):
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path != meta:
                    rel = path.relative_to(folder).as_posix()
                    self.client.upload_file(str(path), self.bucket, self._object(key, rel))
        body = meta.read_bytes()
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

    def delete(self, key: EngineKey) -> None:
        with self._errors("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key, names.ENGINE_METADATA_FILE))
            objects = [{"Key": k} for k in self._list(self._object(key, ""))]
            for i in range(0, len(objects), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects[i:i + 1000], "Quiet": True})

    def put_blob(self, name: str, data: bytes) -> None:
        obj = self._blob(name)
        with self._errors("write"):
            self.client.put_object(Bucket=self.bucket, Key=obj, Body=data)

    # -- helpers ------------------------------------------------------------------------
    def _object(self, key: EngineKey, name: str) -> str:
        if not key or "/" in key or key.startswith((".", "_")):
            raise ValueError(f"{key!r} is not an engine key")
        return "/".join(p for p in (self.prefix, key) if p) + "/" + name

    def _blob(self, name: str) -> str:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"blob name {name!r} must be a relative path without '..'")
        return "/".join(p for p in (self.prefix, name) if p)

    def _get(self, obj: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=obj)
            data: bytes = response["Body"].read()
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

    def _list(self, prefix: str) -> Iterator[str]:
        with self._errors("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield str(obj["Key"])

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (StoreUnavailableError, EngineNotFoundError, OSError, ValueError):
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
