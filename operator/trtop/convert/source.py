"""Model sources: bring a model (or sample / calibration data) from its URI to a local path, and digest it.

Schemes: a plain path or ``file://`` (a PVC mounted by the build Job: copied into the work
folder first, see below), ``https://`` (a file), ``s3://bucket/key`` (one object, or every
object under ``key/``; boto3 with the AWS_* variables) and ``gs://bucket/object`` (the GCS
JSON API over HTTPS; a token from ``GOOGLE_OAUTH_ACCESS_TOKEN`` or google-auth's default
credentials, anonymous for public buckets; ``STORAGE_EMULATOR_HOST`` points it at an
emulator). Whatever the scheme, ``.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip`` archives are
unpacked (``archives``).

A local path is never used in place: a PVC may be ReadWriteMany and written by other pods
while the build runs, so bytes read there after the digest was checked could be other
bytes than the pinned ones (time of check to time of use). ``_Snapshot`` copies the file
or folder into the work folder and hashes each file as it copies it (one read), so the
digest checked is that of exactly the bytes converted. The copy reads only what
``guard.check_local_path`` allows, race-free: every component is opened without
following links (a file or folder swapped for a link or a FIFO after the listing is
refused, never followed), a link inside the model folder gets its target's bytes once the
target is checked to lie under a file root and is a regular file (a link to a folder is
refused: the digest has never covered what it holds), and the fetch's byte and file caps
and deadline bound it as they bound a download.

Every fetch obeys a ``FetchPolicy`` (``trtop.api.fetch``; the build Job gets the
operator's in ``TRTOP_FETCH_POLICY``): allowed schemes and hosts, no private, loopback or
link-local address (checked at every redirect, by ``guard`` / ``http_fetch``), file paths
only under the model mount, byte caps on downloads (also for s3:// and gs:// folders and
local copies) and on unpacked archives (``archives``), object names that stay inside the
target folder, and one deadline per fetch. Credentials in URIs never reach a log line or an
error message (``redact``).

The digest is ``sha256:<hex>``: of the bytes for a single file (an archive is digested as
downloaded or copied, so ``sha256sum`` gives the same answer, and checked before it is
unpacked: ``fetch_model``), and for a folder of the listing
``<relative path>\\0<sha256 of file>\\n`` over all files in path order (a link to a file
counts as a file with its target's bytes; links to folders and dangling links are left
out). ``trtop convert --print-digest PATH`` prints it, the same for the source and its
snapshot. Called by ``pipeline.py``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from trtop.api.fetch import FetchPolicy, redact
from trtop.convert import archives, http_fetch
from trtop.convert.errors import (
    BadRequestError, DigestMismatchError, FetchRefusedError, ModelNotFoundError, NetworkError, TooLargeError,
    UnsafeArchiveError, UserError,
)
from trtop.convert.guard import (
    PERMISSIVE, Deadline, check_local_path, check_scheme, links_outside, not_regular,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20
RETRY_DELAYS = (0.5, 2.0)  # seconds between attempts at a remote source; the Job retries beyond
SCHEMES = ("file", "https", "http", "s3", "gs")


def fetch(uri: str, workdir: Path, policy: FetchPolicy = PERMISSIVE) -> Path:
    """The local path of ``uri``: fetched under ``workdir`` (a local path copied there too), archives unpacked.

    ``policy``: what may be fetched; the default allows everything a person at a terminal
    may read, the build Job passes the operator's (``trtop convert`` reads it from the env).

    Sample and calibration data (the pipeline's users of this) are snapshotted like the
    model although nothing pins them: read in place, a file swapped on the volume after
    ``check_local_path`` could be a link out of the mount (the pod's secrets), a FIFO (the
    build blocks for ever) or a file that never stops growing; the snapshot reads them
    with the same no-follow, caps and deadline as the model, and they are small.
    """
    local, deadline, _ = _fetched(uri, workdir, policy)
    return archives.unpack(local, policy, deadline)


def fetch_model(uri: str, workdir: Path, policy: FetchPolicy, pinned: str | None) -> tuple[Path, str]:
    """``fetch``, and the digest of what was fetched, checked against ``pinned`` before an archive
    is unpacked: an archive is digested as its bytes (``sha256sum`` agrees), and one that is not
    the pinned model is never opened. The path returned is always a private copy under
    ``workdir`` whose bytes are the ones digested (a local source is snapshotted: module doc)."""
    local, deadline, digest = _fetched(uri, workdir, policy)
    digest = digest or digest_of(local)  # a download lies in the work folder: nobody else writes there
    check_digest(digest, pinned, uri)
    return archives.unpack(local, policy, deadline), digest


def _fetched(uri: str, workdir: Path, policy: FetchPolicy) -> tuple[Path, Deadline, str]:
    """The local path of ``uri`` as fetched under ``workdir`` (an archive not unpacked yet), the fetch's
    deadline, and the digest when it was taken while fetching (a local snapshot's; "" for a download)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme not in SCHEMES:
        raise BadRequestError(f"{redact(uri)}: scheme {scheme!r} is not one of file, https, s3, gs")
    check_scheme(uri, policy)
    dest = workdir / "source"
    deadline = Deadline(policy.deadline_seconds, uri)
    if scheme == "file":
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
        if not path.exists():
            raise ModelNotFoundError(f"{redact(uri)}: no such file or folder (is the model's volume mounted at "
                                     "that path?)")
        resolved = check_local_path(uri, path, policy)
        name = _safe_name(path.name) or _safe_name(resolved.name) or "model"  # the name formats are told by
        local, digest = _Snapshot(uri, resolved, policy, deadline).copy_to(dest, name)
        return local, deadline, digest
    dest.mkdir(parents=True, exist_ok=True)
    if scheme in ("https", "http"):
        name = _safe_name(Path(urllib.parse.urlparse(uri).path).name) or "model"
        local = _with_retries(lambda: http_fetch.download(uri, dest / name, policy, deadline), uri, deadline)
    elif scheme == "s3":
        local = _s3_download(uri, dest, policy, deadline)
    else:
        local = _gcs_download(uri, dest, policy, deadline)
    return local, deadline, ""


def digest_of(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's file listing (see the module doc)."""
    if path.is_file():
        return "sha256:" + _sha256_file(path)
    # rglob follows links to files but does not descend into links to folders (_Snapshot matches both).
    return _listing_digest([(p.relative_to(path).as_posix(), _sha256_file(p)) for p in path.rglob("*") if p.is_file()])


def _listing_digest(files: list[tuple[str, str]]) -> str:
    """A folder's digest from its (relative posix path, hex sha256) pairs: the lines in path order.

    Path order is pathlib's (component by component: ``a/b`` before ``a-c``), which pins made by
    earlier versions (that sorted ``Path`` objects) rely on."""
    h = hashlib.sha256()
    for rel, hexdigest in sorted(files, key=lambda f: f[0].split("/")):
        # The name's bytes as the file system holds them: the same as UTF-8 for every name that is, and a name
        # that is not (a Latin-1 archive's, a tenant's) is digested instead of raising UnicodeEncodeError.
        h.update(os.fsencode(rel) + b"\0" + hexdigest.encode() + b"\n")
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


# --- local snapshots -----------------------------------------------------------------------------
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no link; a FIFO opens at once
_OPEN_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
# A folder only passed through (search permission is enough, as for a path); a link there is ENOTDIR.
_SEARCH_DIR = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def _listdir(dir_fd: int) -> list[tuple[str, int]]:
    """(name, mode as ``lstat`` gives it) of each entry of the open folder ``dir_fd``: the snapshot's plan.

    Only a plan: every entry is opened again without following links and judged by ``fstat`` of
    what was opened, since a writer may swap it for a link or a FIFO right after this listing."""
    entries = []
    for name in sorted(os.listdir(dir_fd)):
        try:
            entries.append((name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode))
        except FileNotFoundError:
            continue  # removed since listdir: as if listed a moment later
    return entries


class _Snapshot:
    """A private copy of a local file or folder, each file hashed as it is copied (see the module doc).

    ``source`` is ``check_local_path``'s answer (resolved, under a file root). Nothing is read
    through a name that may have become a link since: the copy walks from the file root down one
    component at a time with O_NOFOLLOW (a link there fails with ELOOP, a file where a folder was
    with ENOTDIR), opens files with O_NONBLOCK (a FIFO swapped in opens at once) and reads one
    only once ``fstat`` of the opened descriptor says it is a regular file.
    ``trtop.store.integrity.open_regular`` does the same for one path name; this needs it relative
    to a folder's descriptor, and as the tenant's refusal (``FetchRefusedError``, exit 2), where
    that one's ``IntegrityError`` is a store failure the pipeline would retry as infra.
    """

    def __init__(self, uri: str, source: Path, policy: FetchPolicy, deadline: Deadline) -> None:
        self.uri, self.source, self.policy, self.deadline = uri, source, policy, deadline
        self.roots = tuple(Path(root).resolve() for root in policy.file_roots)
        self.bytes_left = policy.max_bytes
        self.entries_left = policy.max_files
        self.buffer = memoryview(bytearray(CHUNK))

    def copy_to(self, dest: Path, name: str) -> tuple[Path, str]:
        """The snapshot, ``dest/<a new folder>/name``, and its digest (``digest_of``'s format); on any
        failure nothing of it is left behind."""
        if dest.resolve().is_relative_to(self.source):
            raise BadRequestError(f"{redact(self.uri)}: the work folder {dest.parent} lies inside the model folder, "
                                  "which is copied into it: use a work folder elsewhere (--workdir)")
        self._check_planned()
        dest.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix="local-", dir=dest))
        target = holder / name
        try:
            fd = self._open_resolved(self.source, name)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                files: list[tuple[str, str]] = []
                try:
                    target.mkdir()
                    self._tree(fd, target, files)
                finally:
                    os.close(fd)
                digest = _listing_digest(files)
            else:
                digest = "sha256:" + self._file(fd, target, name)
        except BaseException:
            shutil.rmtree(holder, ignore_errors=True)
            raise
        log.info("copied %s into the work folder (%d bytes): the build reads that copy, never the volume",
                 redact(self.uri), self.policy.max_bytes - self.bytes_left)
        return target, digest

    def _check_planned(self) -> None:
        """Refuse at once what is over the caps already; the copy counts again as it reads (files grow)."""
        if not self.source.is_dir():
            _check_size(self.source.stat().st_size, self.policy, self.uri)
            return
        total = entries = 0
        for folder, dirnames, filenames in os.walk(self.source):
            self.deadline.left()
            entries += len(dirnames) + len(filenames)
            for f in filenames:
                try:
                    total += os.lstat(os.path.join(folder, f)).st_size
                except OSError:
                    pass  # gone already: the copy decides
            if entries > self.policy.max_files:
                raise self._too_many()
        _check_size(total, self.policy, self.uri)

    def _tree(self, top_fd: int, top: Path, files: list[tuple[str, str]]) -> None:
        """Copy the folder open as ``top_fd`` into ``top``; its files' (relative path, sha256) into ``files``."""
        pending: list[tuple[str, Path]] = [("", top)]  # a stack, not recursion: a deep tree costs no fds
        while pending:
            rel, out = pending.pop()
            dir_fd = self._open_below(top_fd, rel) if rel else top_fd
            try:
                try:
                    entries = _listdir(dir_fd)
                except PermissionError:
                    raise self._denied(rel or ".") from None
                for name, mode in entries:
                    self.deadline.left()
                    child = f"{rel}/{name}" if rel else name
                    if stat.S_ISDIR(mode):
                        self._take_entry()
                        (out / name).mkdir()
                        pending.append((child, out / name))
                    elif stat.S_ISREG(mode):
                        fd = self._open_at(dir_fd, name, child, _OPEN_FILE)
                        files.append((child, self._file(fd, out / name, child)))
                    elif stat.S_ISLNK(mode):
                        if hexdigest := self._link(dir_fd, name, child, out / name):
                            files.append((child, hexdigest))
                    else:
                        raise not_regular(self.uri, child)
            finally:
                if dir_fd != top_fd:
                    os.close(dir_fd)

    def _link(self, dir_fd: int, name: str, child: str, target: Path) -> str:
        """A link inside the model folder: its target's bytes copied as ``child`` once the target lies under
        a file root (``check_local_path``'s rule) and is a regular file; the sha256, "" for a dangling link
        (``digest_of`` leaves those out too). A link to a folder is refused: ``digest_of`` never looked
        into one, so its files were never pinned, and copying them would change existing pins."""
        try:
            pointed = os.readlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return ""
        except OSError:  # EINVAL: no longer a link
            raise self._changed(child) from None
        where = Path(os.path.realpath(self.source / PurePosixPath(child).parent / pointed))
        if not any(where.is_relative_to(root) for root in self.roots):
            raise links_outside(self.uri, child, self.policy)
        try:
            where.stat()  # metadata only, under a root: whether it points anywhere (digest_of's is_file asks the same)
        except OSError:
            return ""  # dangling, a loop, a file as a folder: nothing to open, and never in the digest
        fd = self._open_resolved(where, child)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise FetchRefusedError(
                f"{redact(self.uri)}: {child} is a link to a folder; the model's digest does not cover a linked "
                "folder's files, so they cannot be pinned: put the folder itself (or a copy) there"
            )
        return self._file(fd, target, child)

    def _file(self, fd: int, target: Path, shown: str) -> str:
        """Copy the open file ``fd`` (closed here) into a new ``target``, hashing each chunk as it goes; the sha256."""
        try:
            size = os.fstat(fd)
            if not stat.S_ISREG(size.st_mode):  # a FIFO, device or folder swapped in after the listing
                raise not_regular(self.uri, shown)
            os.set_blocking(fd, True)  # a regular file's reads never wait anyway
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb", buffering=0) as f:
            self._take_entry()
            if size.st_size > self.bytes_left:
                raise self._too_large(shown)
            h = hashlib.sha256()
            with open(target, "xb") as out:
                # At most one byte past what is left: a file longer than the cap (or growing) stops there.
                while n := f.readinto(self.buffer[:min(CHUNK, self.bytes_left + 1)]):
                    self.deadline.left()
                    self.bytes_left -= n
                    if self.bytes_left < 0:
                        raise self._too_large(shown)
                    h.update(self.buffer[:n])
                    out.write(self.buffer[:n])
        return h.hexdigest()

    def _open_resolved(self, path: Path, shown: str) -> int:
        """A descriptor of the resolved ``path`` under a file root, opened from that root one component at a time
        without following links (a component swapped for a link since ``path`` was resolved is refused)."""
        root = max((r for r in self.roots if path.is_relative_to(r)), key=lambda r: len(r.parts))
        parts = path.relative_to(root).parts
        # The root is the mount point (the platform's, not the tenant's): opened by name.
        fd = os.open(root, (_SEARCH_DIR if parts else os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) & ~os.O_NOFOLLOW)
        try:
            for i, part in enumerate(parts):
                opened = self._open_at(fd, part, shown, _OPEN_FILE if i == len(parts) - 1 else _SEARCH_DIR)
                os.close(fd)
                fd = opened
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_below(self, top_fd: int, rel: str) -> int:
        """The folder ``rel`` below the open folder ``top_fd``, each component opened without following links."""
        fd = top_fd
        parts = rel.split("/")
        try:
            for i, part in enumerate(parts):
                opened = self._open_at(fd, part, rel, _OPEN_DIR if i == len(parts) - 1 else _SEARCH_DIR)
                if fd != top_fd:
                    os.close(fd)
                fd = opened
        except BaseException:
            if fd != top_fd:
                os.close(fd)
            raise
        return fd

    def _open_at(self, dir_fd: int, name: str, shown: str, flags: int) -> int:
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):  # a link; a file where a folder was; a socket
                raise self._changed(shown) from None
            if e.errno == errno.ENOENT:
                raise ModelNotFoundError(f"{redact(self.uri)}: {shown} disappeared while the model was copied (is "
                                         "something still writing the model's volume?)") from None
            if e.errno == errno.EACCES:
                raise self._denied(shown) from None
            raise

    def _take_entry(self) -> None:
        self.entries_left -= 1
        if self.entries_left < 0:
            raise self._too_many()

    def _denied(self, shown: str) -> UserError:
        return UserError(f"{redact(self.uri)}: {shown}: permission denied (the build's user may not read it: check "
                         "the model's permissions on the volume)")

    def _changed(self, shown: str) -> FetchRefusedError:
        return FetchRefusedError(f"{redact(self.uri)}: {shown} turned into a link or a special file while the model "
                                 "was copied; refused, not followed (is something writing the model's volume?)")

    def _too_large(self, shown: str) -> TooLargeError:
        return TooLargeError(
            f"{redact(self.uri)}: more than the {self.policy.max_bytes} bytes a fetch may copy (fetch.maxBytes): "
            f"{shown} is larger or grew while it was copied; if the model is still being written, wait until it is "
            "complete, else use a smaller model or ask the platform to raise fetch.maxBytes"
        )

    def _too_many(self) -> TooLargeError:
        return TooLargeError(f"{redact(self.uri)}: more than {self.policy.max_files} files and folders "
                             "(fetch.maxFiles)")


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

