"""Model sources: bring a model (or sample / calibration data) from its URI to a local path, and digest it.

Schemes: a plain path or ``file://`` (a PVC mounted by the build Job: used in place),
``https://`` (a file; ``.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip`` archives are unpacked),
``s3://bucket/key`` (one object, or every object under ``key/``; boto3 with the AWS_*
variables) and ``gs://bucket/object`` (the GCS JSON API over HTTPS; a token from
``GOOGLE_OAUTH_ACCESS_TOKEN`` or google-auth's default credentials, anonymous for public
buckets; ``STORAGE_EMULATOR_HOST`` points it at an emulator).

Every fetch obeys a ``FetchPolicy`` (``trtop.api.fetch``; the build Job gets the
operator's in ``TRTOP_FETCH_POLICY``): allowed schemes and hosts, no private, loopback or
link-local address (checked at every redirect, by ``guard`` / ``http_fetch``), file paths
only under the model mount, byte caps on downloads (also for s3:// and gs:// folders) and
on unpacked archives (``archives``), object names that stay inside the target folder, and
one deadline per fetch. Credentials in URIs never reach a log line or an error message
(``redact``).

The digest is ``sha256:<hex>``: of the bytes for a single file (an archive is digested as
downloaded, so ``sha256sum`` gives the same answer, and checked before it is unpacked:
``fetch_model``), and for a folder of the listing ``<relative path>\\0<sha256 of file>\\n``
over all files in path order. ``trtop convert --print-digest PATH`` prints it. Called by
``pipeline.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from trtop.api.fetch import FetchPolicy, redact
from trtop.convert import archives, http_fetch
from trtop.convert.errors import (
    BadRequestError, DigestMismatchError, ModelNotFoundError, NetworkError, TooLargeError, UnsafeArchiveError,
    UserError,
)
from trtop.convert.guard import PERMISSIVE, Deadline, check_local_path, check_scheme

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20
RETRY_DELAYS = (0.5, 2.0)  # seconds between attempts at a remote source; the Job retries beyond
SCHEMES = ("file", "https", "http", "s3", "gs")


def fetch(uri: str, workdir: Path, policy: FetchPolicy = PERMISSIVE) -> Path:
    """The local path of ``uri`` (fetched under ``workdir`` when remote; archives unpacked).

    ``policy``: what may be fetched; the default allows everything a person at a terminal
    may read, the build Job passes the operator's (``trtop convert`` reads it from the env).
    """
    local, deadline = _fetched(uri, workdir, policy)
    return local if deadline is None else archives.unpack(local, policy, deadline)


def fetch_model(uri: str, workdir: Path, policy: FetchPolicy, pinned: str | None) -> tuple[Path, str]:
    """``fetch``, and the digest of what was fetched, checked against ``pinned`` before an archive
    is unpacked: an archive is digested as its bytes (``sha256sum`` agrees), and one that is not
    the pinned model is never opened."""
    local, deadline = _fetched(uri, workdir, policy)
    digest = digest_of(local)
    check_digest(digest, pinned, uri)
    return (local if deadline is None else archives.unpack(local, policy, deadline)), digest


def _fetched(uri: str, workdir: Path, policy: FetchPolicy) -> tuple[Path, Deadline | None]:
    """The local path of ``uri`` as fetched (an archive not unpacked yet), and the fetch's deadline (None: a local path)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme not in SCHEMES:
        raise BadRequestError(f"{redact(uri)}: scheme {scheme!r} is not one of file, https, s3, gs")
    check_scheme(uri, policy)
    if scheme == "file":
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
        if not path.exists():
            raise ModelNotFoundError(f"{redact(uri)}: no such file or folder (is the model's volume mounted at "
                                     "that path?)")
        check_local_path(uri, path, policy)
        return path, None
    dest = workdir / "source"
    dest.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(policy.deadline_seconds, uri)
    if scheme in ("https", "http"):
        name = _safe_name(Path(urllib.parse.urlparse(uri).path).name) or "model"
        local = _with_retries(lambda: http_fetch.download(uri, dest / name, policy, deadline), uri, deadline)
    elif scheme == "s3":
        local = _s3_download(uri, dest, policy, deadline)
    else:
        local = _gcs_download(uri, dest, policy, deadline)
    return local, deadline


def digest_of(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's file listing (see the module doc)."""
    if path.is_file():
        return "sha256:" + _sha256_file(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(f"{p.relative_to(path).as_posix()}\0{_sha256_file(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def check_digest(actual: str, expected: str | None, uri: str) -> None:
    if not expected:
        return
    if not expected.startswith("sha256:") or len(expected) != len("sha256:") + 64:
        raise BadRequestError(f"model.digest {expected!r} is not 'sha256:<64 hex digits>'")
    if actual.lower() != expected.lower():
        raise DigestMismatchError(
            f"{uri} has digest {actual}, but the request pins {expected}: the model changed since it was pinned. "
            "Pin the new digest (trtop convert --print-digest PATH) or restore the model."
        )


# --- schemes -----------------------------------------------------------------------------------
def _s3_download(uri: str, dest: Path, policy: FetchPolicy, deadline: Deadline) -> Path:
    from trtop.store.s3 import error_code, s3_client, split_s3_uri

    bucket, key = split_s3_uri(uri)
    client = s3_client()

    def attempt() -> Path:
        try:
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                single = bool(key)
            except Exception as e:
                if error_code(e) not in {"404", "NoSuchKey", "NotFound"}:
                    raise
                single = False
            if single:
                _check_size(int(head.get("ContentLength", 0)), policy, uri)
                target = dest / (_safe_name(Path(key).name) or "model")
                log.info("downloading %s", redact(uri))
                _s3_get(client, bucket, key, target, policy.max_bytes, deadline, uri)
                return target
            prefix = f"{key}/" if key else ""
            folder = dest / (_safe_name(Path(key).name) or "model")
            objects = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                deadline.left()
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix):]
                    if rel and not rel.endswith("/"):
                        objects.append((obj["Key"], _inside(folder, rel, uri), int(obj.get("Size", 0))))
                _check_count(len(objects), policy, uri)
            if not objects:
                raise ModelNotFoundError(f"{redact(uri)}: no object and no objects under it")
            _check_size(sum(size for _, _, size in objects), policy, uri)
            left = policy.max_bytes
            for name, target, _ in objects:
                deadline.left()
                target.parent.mkdir(parents=True, exist_ok=True)
                left -= _s3_get(client, bucket, name, target, left, deadline, uri)
            log.info("downloaded %d objects from %s", len(objects), redact(uri))
            return folder
        except UserError:
            raise
        except Exception as e:
            raise _s3_error(uri, e) from e
    return _with_retries(attempt, uri, deadline)


def _s3_error(uri: str, exc: Exception) -> Exception:
    from trtop.store.s3 import error_code

    code = error_code(exc)
    name = type(exc).__name__
    if isinstance(exc, NetworkError):
        return exc
    if code in {"NoSuchBucket", "404", "NoSuchKey"}:
        return ModelNotFoundError(f"{redact(uri)}: {code}: check the bucket and key")
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or name == "NoCredentialsError":
        return UserError(f"{redact(uri)}: {code or name}: the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) "
                         "cannot read this object")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    return NetworkError(redact(f"{uri}: cannot read from {endpoint}: {exc}"))


def _gcs_download(uri: str, dest: Path, policy: FetchPolicy, deadline: Deadline) -> Path:
    bucket, _, obj = uri[len("gs://"):].partition("/")
    obj = obj.strip("/")
    base = os.environ.get("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com").rstrip("/")
    if "://" not in base:
        base = "http://" + base
    headers = _gcs_headers()
    api = f"{base}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
    # The API endpoint is the platform's (the env), not the tenant's: only caps and the deadline apply.
    endpoint = FetchPolicy(schemes=("https", "http"), private_networks=("0.0.0.0/0", "::/0"),
                           max_bytes=policy.max_bytes, deadline_seconds=policy.deadline_seconds)

    def get(url: str, target: Path) -> Path:
        return _with_retries(lambda: http_fetch.download(url, target, endpoint, deadline, headers), uri, deadline)

    def media(name: str) -> str:
        return f"{api}/{urllib.parse.quote(name, safe='')}?alt=media"

    if obj:
        try:
            return get(media(obj), dest / (_safe_name(Path(obj).name) or "model"))
        except ModelNotFoundError as e:
            if "HTTP 404" not in str(e):
                raise _gcs_auth_hint(uri, e) from e
    prefix = f"{obj}/" if obj else ""
    folder = dest / (_safe_name(Path(obj).name) or "model")
    names: list[str] = []
    token = ""
    while True:
        query = urllib.parse.urlencode({"prefix": prefix, "fields": "items(name),nextPageToken",
                                        **({"pageToken": token} if token else {})})
        listing = dest / ".listing.json"
        try:
            get(f"{api}?{query}", listing)
        except ModelNotFoundError as e:
            raise _gcs_auth_hint(uri, e) from e
        page: dict[str, Any] = json.loads(listing.read_text())
        listing.unlink()
        names += [item["name"] for item in page.get("items", []) if not item["name"].endswith("/")]
        _check_count(len(names), policy, uri)
        token = page.get("nextPageToken", "")
        if not token:
            break
    if not names:
        raise ModelNotFoundError(f"{redact(uri)}: no object and no objects under it")
    spent = 0
    for name in names:
        target = _inside(folder, name[len(prefix):], uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        get(media(name), target)
        spent += target.stat().st_size
        _check_size(spent, policy, uri)
    return folder


def _gcs_headers() -> dict[str, str]:
    token = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN", "")
    if not token and os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        try:
            import google.auth
            import google.auth.transport.requests
        except ImportError:
            raise UserError(
                "gs:// with GOOGLE_APPLICATION_CREDENTIALS needs the google-auth package in the converter image; "
                "install it, or pass a token in GOOGLE_OAUTH_ACCESS_TOKEN"
            ) from None
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_only"])
        credentials.refresh(google.auth.transport.requests.Request())
        token = str(credentials.token)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _gcs_auth_hint(uri: str, exc: ModelNotFoundError) -> UserError:
    hint = "" if _gcs_headers() else (" No credentials were given: set GOOGLE_OAUTH_ACCESS_TOKEN or "
                                       "GOOGLE_APPLICATION_CREDENTIALS (with google-auth installed).")
    return ModelNotFoundError(f"{redact(uri)}: {exc.message}.{hint}")


# --- helpers -----------------------------------------------------------------------------------
def _with_retries(attempt: Callable[[], T], what: str, deadline: Deadline) -> T:
    for delay in (*RETRY_DELAYS, None):
        try:
            return attempt()
        except NetworkError as e:
            if delay is None:
                raise
            log.warning("%s; retrying in %.1f s", redact(e.message), delay)
            time.sleep(min(delay, deadline.left()))
    raise AssertionError("unreachable")  # the loop returns or raises


def _safe_name(name: str) -> str:
    """A downloaded file's local name: one harmless path component ("" when there is none)."""
    name = name.replace("\\", "_").strip()
    return "" if name in ("", ".", "..") else name[:200]


def _inside(folder: Path, rel: str, uri: str) -> Path:
    """``folder/rel`` for an object name below a prefix; refused when it would leave ``folder``."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(p in ("", ".", "..") for p in rel.split("/")) or "\\" in rel:
        raise UnsafeArchiveError(f"{redact(uri)}: object name {rel!r} would land outside the download folder")
    return folder.joinpath(*pure.parts)


def _s3_get(client: Any, bucket: str, key: str, target: Path, most: int, deadline: Deadline, uri: str) -> int:
    """Object ``key`` into ``target``, at most ``most`` bytes, the deadline checked at every chunk; its size.

    Sizes were checked from HEAD or the listing, but the object may have been replaced since (a tenant
    writing to its bucket): what arrives is counted, as an https body is."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    done = 0
    try:
        with open(target, "wb") as f:
            while chunk := body.read(CHUNK):
                done += len(chunk)
                if done > most:
                    raise TooLargeError(f"{redact(uri)}: more than the {most} bytes left of what a fetch may download "
                                        "(fetch.maxBytes); the object grew after it was listed")
                deadline.left()
                f.write(chunk)
    finally:
        body.close()
    return done


def _check_size(total: int, policy: FetchPolicy, uri: str) -> None:
    if total > policy.max_bytes:
        raise TooLargeError(f"{redact(uri)}: {total} bytes, more than the {policy.max_bytes} a fetch may download "
                            "(fetch.maxBytes)")


def _check_count(count: int, policy: FetchPolicy, uri: str) -> None:
    if count > policy.max_files:
        raise TooLargeError(f"{redact(uri)}: more than {policy.max_files} objects (fetch.maxFiles)")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()

