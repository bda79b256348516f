"""The engine store on a filesystem: a PVC mount (``/var/lib/trtop/engines``) or ``file://`` URI.

Like the S3 store, a key's ``engine.json`` is the commit, and everything a build writes stays
inside its key's folder (so a build pod needs write access to ``<scope>/<key>`` only: the
build Job mounts just that sub-path, see ``planning.common.store_access``). Publishing copies
the built folder into ``<root>/<key>/b-<random>/`` (an upload folder of its own), checks the
artifact against the record's sha256, flushes it to disk, then creates ``<key>/engine.json``
(naming that folder) with ``link()``, which fails when the name exists: of two builds of
one key exactly one commits, and a committed engine is never overwritten. Readers see a key
only once ``engine.json`` exists; a build killed half-way leaves only an upload folder
(swept by the next build of that key after a day, or with the key by garbage collection).
Only regular files travel (a link in a built or stored folder is refused), and a fetched
copy is checked against the record before it becomes visible. A key's folder is written by
tenant code (its build pod), so every file there is opened without following a link and
without waiting on a FIFO, and read only once ``fstat`` says it is a regular file: a planted
FIFO is refused at once instead of blocking its reader forever. Engines published before
upload folders (files right in the key's folder, ``folder`` empty) are still read.

Used through ``trtop.store.open_store`` by the converter, the operator and the server.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from trtop import names
from trtop.api.engine import MAX_RECORD_BYTES, EngineKey, EngineRecord, RecordError, is_engine_key, parse_record
from trtop.store import EngineNotFoundError, InvalidRecordError
from trtop.store.integrity import (
    CHUNK, UPLOAD_FOLDER, IntegrityError, install_checked, open_regular, regular_files, verify_artifact,
)

TRASH_DIR = ".trash"
# Files a build leaves beside its artifact travel with it unpinned (notes, a log): a fetch copies at
# most this many bytes more than the record pins, so a committed file that a writer keeps growing
# (a build pod that did not stop) cannot fill the serving pod's disk.
BESIDE_ARTIFACT_BYTES = 64 << 20
STALE_UPLOAD_SECONDS = 24 * 3600  # an uncommitted upload folder this old belongs to a dead build


def root_of(uri: str) -> Path:
    """``file:///data/engines`` or ``/data/engines`` -> ``Path('/data/engines')``."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"engine store URI {uri!r}: file:// URIs name a local path (file:///path)")
        return Path(unquote(parsed.path))
    return Path(uri)


def make_folders(root: Path, subpaths: Iterable[str]) -> None:
    """Make ``root/<sub>`` (and its parents) for a build Job's writable sub-path mounts, writable by this user.

    The operator calls it before it creates the Job, as the workloads' user: a kubelet would
    make a missing sub-path as root, and the non-root build could not write to it. A folder
    that exists but is not writable (made earlier by a kubelet, or by hand) is an error that
    says what to do, not a build that fails later with EACCES.
    """
    for sub in subpaths:
        rel = Path(sub)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"store sub-path {sub!r} is not a relative path inside the store")
        path = root / rel
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o775)
            writable = os.access(path, os.W_OK | os.X_OK)
        except PermissionError as e:
            writable, path = False, Path(e.filename or path)
        if not writable:
            raise PermissionError(
                13, f"the engine store folder {path} is not writable by the operator (uid {os.geteuid()}), so a "
                f"build could not write there either; it was made by another user (a kubelet makes a missing "
                f"sub-path as root): give it to the workloads' user (chown -R 1000:1000) or delete it", str(path))


class FilesystemStore:
    """Engines as folders under one root directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = root_of(uri)

    # -- reading ------------------------------------------------------------------------
    def get_record(self, key: EngineKey) -> EngineRecord | None:
        path = self._key_dir(key) / names.ENGINE_METADATA_FILE
        try:
            return read_record_file(path, key)
        except FileNotFoundError:
            return None

    def list_keys(self) -> list[EngineKey]:
        if not self.root.is_dir():
            return []
        return sorted(
            EngineKey(p.name) for p in self.root.iterdir()
            if is_engine_key(p.name) and (p / names.ENGINE_METADATA_FILE).is_file()
        )

    def fetch(self, key: EngineKey, dest: Path) -> Path:
        src = self._key_dir(key)
        try:
            record = read_record_file(src / names.ENGINE_METADATA_FILE, key)
        except FileNotFoundError:
            raise EngineNotFoundError(f"engine {key} is not published in {self.uri}") from None
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / key
        if (final / names.ENGINE_METADATA_FILE).is_file():
            return final  # fetched and checked before; the server checks the bytes again
        tmp = dest / f".{key}-{uuid.uuid4().hex[:8]}"
        try:
            # The committed build's own folder; other builds' upload folders never travel.
            # Bounded: the artifact's pinned size, and what files beside it may add.
            copy_regular_tree(src / record.folder if record.folder else src, tmp,
                              skip=lambda p: p.name == names.ENGINE_METADATA_FILE or bool(UPLOAD_FOLDER.match(p.name)),
                              most=record.size + BESIDE_ARTIFACT_BYTES)
            (tmp / names.ENGINE_METADATA_FILE).write_text(dataclasses.replace(record, folder="").to_json())
            return install_checked(tmp, final, record, self.uri)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def get_blob(self, name: str) -> bytes | None:
        try:
            return read_regular(self._blob_path(name))
        except FileNotFoundError:
            return None

    # -- writing ------------------------------------------------------------------------
    def publish(self, key: EngineKey, folder: Path) -> bool:
        if not (folder / names.ENGINE_METADATA_FILE).is_file():
            raise ValueError(f"{folder} has no {names.ENGINE_METADATA_FILE}: nothing to publish")
        final = self._key_dir(key)
        commit = final / names.ENGINE_METADATA_FILE
        if commit.exists():
            return False
        final.mkdir(parents=True, exist_ok=True)  # a build pod's mount: it exists already
        self._sweep(final)
        upload = final / f"b-{uuid.uuid4().hex[:12]}"
        pending = final / f".{upload.name}.json"
        committed = False
        try:
            copy_regular_tree(folder, upload, skip=lambda p: p.name == names.ENGINE_METADATA_FILE)
            record = read_record_file(folder / names.ENGINE_METADATA_FILE, key)
            verify_artifact(upload, record, origin=f"the build folder {folder}")
            _write_synced(pending, dataclasses.replace(record, folder=upload.name).to_json().encode())
            _fsync_tree(upload)
            try:
                os.link(pending, commit)  # fails when the name exists: a committed engine stays as it is
            except FileExistsError:
                return False  # another build of this key committed first
            committed = True
            _fsync_dir(final)
            return True
        finally:
            pending.unlink(missing_ok=True)
            if not committed:
                shutil.rmtree(upload, ignore_errors=True)

    def delete(self, key: EngineKey) -> None:
        src = self._key_dir(key)
        if not src.exists():
            return
        trash_root = self.root / TRASH_DIR
        trash_root.mkdir(parents=True, exist_ok=True)
        trash = trash_root / f"{key}-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(src, trash)  # the key disappears at once; the bytes go after
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def put_blob(self, name: str, data: bytes) -> None:
        path = self._blob_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            _write_synced(tmp, data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    # -- helpers ------------------------------------------------------------------------
    def _key_dir(self, key: EngineKey) -> Path:
        if not is_engine_key(key):
            raise ValueError(f"{key!r} is not an engine key")
        return self.root / key

    def _blob_path(self, name: str) -> Path:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or any(p in ("..", ".") for p in parts):
            raise ValueError(f"blob name {name!r} must be a relative path without '..'")
        return self.root.joinpath(*parts)

    @staticmethod
    def _sweep(key_dir: Path) -> None:
        """Remove upload folders of builds of this key that died long ago (a live build is never that old)."""
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        for p in key_dir.iterdir():
            try:
                if UPLOAD_FOLDER.match(p.name) and p.stat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)
            except FileNotFoundError:
                pass


def read_record_file(path: Path, key: EngineKey) -> EngineRecord:
    """The record at ``path`` (bounded read, strict parse); FileNotFoundError when there is none."""
    try:
        data = read_regular(path, MAX_RECORD_BYTES + 1)
        return parse_record(data, key=key, where=str(path))
    except (RecordError, IntegrityError) as exc:
        raise InvalidRecordError(f"{exc}. The engine is not used; delete {path.parent} to have it rebuilt") from None


def read_regular(path: Path, limit: int = -1) -> bytes:
    """At most ``limit`` bytes (all when -1) of the regular file ``path``; see ``open_regular``."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read(limit)


def copy_regular_tree(src: Path, dst: Path, skip: Callable[[Path], bool] | None = None,
                      most: int | None = None) -> None:
    """Copy the files of ``src`` (less ``skip``'s entries) to a new ``dst``; ``IntegrityError`` at
    a link or special file (``src`` itself included: a record's upload folder could name a link),
    and past ``most`` bytes in all (a file that a writer keeps growing must not fill the disk)."""
    if not stat.S_ISDIR(os.lstat(src).st_mode):
        raise IntegrityError(f"{src} is a link or a special file, not a folder: refused")
    files = regular_files(src, skip)
    dst.mkdir(parents=True)
    left = -1 if most is None else most + 1  # one byte past the bound tells a longer file
    for file in files:
        target = dst / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Opened again with the checks: the listing's lstat could be raced by a swap to a FIFO.
        with os.fdopen(open_regular(file), "rb") as fin, open(target, "wb") as fout:
            while chunk := fin.read(CHUNK if left < 0 else min(CHUNK, left)):
                fout.write(chunk)
                if left >= 0:
                    left -= len(chunk)
        if left == 0:
            raise IntegrityError(f"{src} holds more than {most} bytes, more than its record allows: refused")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """Flush file contents before the rename makes them visible (a crash must not show zeros)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories
    finally:
        os.close(fd)
