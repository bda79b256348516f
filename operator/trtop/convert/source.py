"""Model sources: bring a model (or sample / calibration data) from its URI to a local path, and digest it.

Schemes: a plain path or ``file://`` (a PVC mounted by the build Job: used in place),
``https://`` (a file; ``.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip`` archives are unpacked),
``s3://bucket/key`` (one object, or every object under ``key/``; boto3 with the AWS_*
variables) and ``gs://bucket/object`` (the GCS JSON API over HTTPS; a token from
``GOOGLE_OAUTH_ACCESS_TOKEN`` or google-auth's default credentials, anonymous for public
buckets; ``STORAGE_EMULATOR_HOST`` points it at an emulator).

The digest is ``sha256:<hex>``: of the bytes for a single file (an archive is digested as
downloaded, so ``sha256sum`` gives the same answer), and for a folder of the listing
``<relative path>\\0<sha256 of file>\\n`` over all files in path order. ``trtop convert
--print-digest PATH`` prints it. Called by ``pipeline.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from trtop.convert.errors import (
    BadRequestError, DigestMismatchError, ModelFormatError, ModelNotFoundError, NetworkError, UserError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
RETRY_DELAYS = (0.5, 2.0)  # seconds between attempts at a remote source; the Job retries beyond
_USER_HTTP = {400, 401, 403, 404, 410}


def fetch(uri: str, workdir: Path) -> Path:
    """The local path of ``uri`` (fetched under ``workdir`` when remote; archives unpacked)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    if scheme == "file":
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
        if not path.exists():
            raise ModelNotFoundError(f"{uri}: no such file or folder (is the model's volume mounted at that path?)")
        return path
    dest = workdir / "source"
    dest.mkdir(parents=True, exist_ok=True)
    if scheme == "https" or scheme == "http":
        name = Path(urllib.parse.urlparse(uri).path).name or "model"
        return _unpack(_http_download(uri, dest / name, {}))
    if scheme == "s3":
        return _unpack(_s3_download(uri, dest))
    if scheme == "gs":
        return _unpack(_gcs_download(uri, dest))
    raise BadRequestError(f"{uri}: scheme {scheme!r} is not one of file, https, s3, gs")


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
def _http_download(url: str, dest: Path, headers: Mapping[str, str]) -> Path:
    def attempt() -> Path:
        request = urllib.request.Request(url, headers=dict(headers))
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                total = int(response.headers.get("Content-Length") or 0)
                _copy_stream(response, dest, total, url)
            return dest
        except urllib.error.HTTPError as e:
            e.close()  # it holds the connection open until garbage-collected
            if e.code in _USER_HTTP:
                raise ModelNotFoundError(f"{url}: HTTP {e.code} {e.reason}: check the URI and its access rights") from e
            raise NetworkError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise NetworkError(f"{url}: cannot reach the host ({reason}); check the host name and the network") from e
    return _with_retries(attempt, url)


def _s3_download(uri: str, dest: Path) -> Path:
    from trtop.store.s3 import error_code, s3_client, split_s3_uri

    bucket, key = split_s3_uri(uri)
    client = s3_client()

    def attempt() -> Path:
        try:
            try:
                client.head_object(Bucket=bucket, Key=key)
                single = bool(key)
            except Exception as e:
                if error_code(e) not in {"404", "NoSuchKey", "NotFound"}:
                    raise
                single = False
            if single:
                target = dest / Path(key).name
                log.info("downloading s3://%s/%s", bucket, key)
                client.download_file(bucket, key, str(target))
                return target
            prefix = f"{key}/" if key else ""
            folder = dest / (Path(key).name or bucket)
            count = 0
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix):]
                    if not rel or rel.endswith("/"):
                        continue
                    target = folder.joinpath(*rel.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, obj["Key"], str(target))
                    count += 1
            if not count:
                raise ModelNotFoundError(f"{uri}: no object and no objects under it")
            log.info("downloaded %d objects from %s", count, uri)
            return folder
        except UserError:
            raise
        except Exception as e:
            raise _s3_error(uri, e) from e
    return _with_retries(attempt, uri)


def _s3_error(uri: str, exc: Exception) -> Exception:
    from trtop.store.s3 import error_code

    code = error_code(exc)
    name = type(exc).__name__
    if code in {"NoSuchBucket", "404", "NoSuchKey"}:
        return ModelNotFoundError(f"{uri}: {code}: check the bucket and key")
    if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or name == "NoCredentialsError":
        return UserError(f"{uri}: {code or name}: the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) "
                         "cannot read this object")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    return NetworkError(f"{uri}: cannot read from {endpoint}: {exc}")


def _gcs_download(uri: str, dest: Path) -> Path:
    bucket, _, obj = uri[len("gs://"):].partition("/")
    obj = obj.strip("/")
    base = os.environ.get("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com").rstrip("/")
    if "://" not in base:
        base = "http://" + base
    headers = _gcs_headers()
    api = f"{base}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"

    def media(name: str) -> str:
        return f"{api}/{urllib.parse.quote(name, safe='')}?alt=media"

    if obj:
        try:
            return _http_download(media(obj), dest / Path(obj).name, headers)
        except ModelNotFoundError as e:
            if "HTTP 404" not in str(e):
                raise _gcs_auth_hint(uri, e) from e
    prefix = f"{obj}/" if obj else ""
    folder = dest / (Path(obj).name or bucket)
    names: list[str] = []
    token = ""
    while True:
        query = urllib.parse.urlencode({"prefix": prefix, "fields": "items(name),nextPageToken",
                                        **({"pageToken": token} if token else {})})
        listing = dest / ".listing.json"
        try:
            _http_download(f"{api}?{query}", listing, headers)
        except ModelNotFoundError as e:
            raise _gcs_auth_hint(uri, e) from e
        page: dict[str, Any] = json.loads(listing.read_text())
        listing.unlink()
        names += [item["name"] for item in page.get("items", []) if not item["name"].endswith("/")]
        token = page.get("nextPageToken", "")
        if not token:
            break
    if not names:
        raise ModelNotFoundError(f"{uri}: no object and no objects under it")
    for name in names:
        target = folder.joinpath(*name[len(prefix):].split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        _http_download(media(name), target, headers)
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
    return ModelNotFoundError(f"{uri}: {exc.message}.{hint}")


# --- helpers -----------------------------------------------------------------------------------
def _with_retries(attempt: Callable[[], T], what: str) -> T:
    for delay in (*RETRY_DELAYS, None):
        try:
            return attempt()
        except NetworkError as e:
            if delay is None:
                raise
            log.warning("%s; retrying in %.1f s", e.message, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _copy_stream(response: Any, dest: Path, total: int, what: str) -> None:
    done, last = 0, time.monotonic()
    with open(dest, "wb") as f:
        while chunk := response.read(CHUNK):
            f.write(chunk)
            done += len(chunk)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                share = f" of {total / 2**20:.1f} MiB ({100 * done / total:.0f}%)" if total else ""
                log.info("fetching %s: %.1f MiB%s", what, done / 2**20, share)


def _unpack(path: Path) -> Path:
    name = path.name.lower()
    if not path.is_file() or not name.endswith(ARCHIVES):
        return path
    out = path.parent / "unpacked"
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                z.extractall(out)
        else:
            with tarfile.open(path) as t:
                t.extractall(out, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise ModelFormatError(f"{path.name}: not a readable archive ({e})") from e
    entries = list(out.iterdir())
    # An archive of one top folder (tar czf m.tgz saved_model/) is that folder.
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()

