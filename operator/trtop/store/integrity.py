"""Pinned bytes: the artifact's sha256 and size, computed at build time and checked wherever it is opened.

An artifact is one file (``model.plan``, ``model.onnx``) or one folder (a TF-TRT
SavedModel). A file's digest is the sha256 of its bytes (``sha256sum`` gives the same);
a folder's is the sha256 of the listing ``<relative path>\\0<sha256 of file>\\n`` over its
files in path order, and its size the sum of theirs. Symbolic links and special files are
refused: a build pod (tenant code) must not make the server read something outside the
engine folder. Each file is opened with ``open_regular`` (no link followed, no wait on a
FIFO swapped in after the listing), and a check against a record reads at most one byte
more than the record's size: a file that never ends cannot hold its reader.

Users: the converter (writes ``sha256``/``size`` into the record), both stores (check at
publish and before a fetched copy becomes visible) and the server (checks again against
the sha256 the operator pinned in the engine set, just before loading).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from trtop.api.engine import EngineRecord
from trtop.store import StoreError

CHUNK = 1 << 20
# A build's own folder inside its key's location (both stores): its record names it, and
# readers copy only that one, never another build's.
UPLOAD_FOLDER = re.compile(r"^b-[0-9a-f]{12}$")


class IntegrityError(StoreError):
    """An engine's bytes are not the ones its record (or the engine set) pins; the message names the key."""


def artifact_digest(path: Path, most: int | None = None) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file or folder artifact; IntegrityError for links and specials.
    With ``most``, reading stops past ``most`` bytes: the size is then ``most + 1`` (and the digest a prefix's)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        return _sha256_file(path, None if most is None else most + 1)
    if not stat.S_ISDIR(mode):
        raise IntegrityError(f"{path} is not a regular file or folder (a link or a special file)")
    listing = hashlib.sha256()
    total = 0
    for file in regular_files(path):
        if most is not None and total > most:
            break
        digest, size = _sha256_file(file, None if most is None else most + 1 - total)
        # The name's bytes as the file system holds them (UTF-8 for every name that is): a build pod's file name
        # that is not UTF-8 is digested, where encoding it raised UnicodeEncodeError in every reader.
        listing.update(os.fsencode(file.relative_to(path).as_posix()) + b"\0" + digest.encode() + b"\n")
        total += size
    return listing.hexdigest(), total


def regular_files(root: Path, skip: Callable[[Path], bool] | None = None) -> list[Path]:
    """Every file under ``root`` in path order; IntegrityError at the first link or special file.
    ``skip`` leaves out entries right below ``root`` (not looked into at all)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if not skip(root / d)]
            filenames = [f for f in filenames if not skip(root / f)]
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise IntegrityError(f"{p} is a link or a special file: an engine folder holds only files and folders")
            if stat.S_ISREG(mode):
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def artifact_path(folder: Path, record: EngineRecord) -> Path:
    """The artifact's path, refused unless it lies inside ``folder`` (after resolving links)."""
    path = folder / record.artifact
    if not path.resolve().is_relative_to(folder.resolve()) or path.resolve() == folder.resolve():
        raise IntegrityError(f"engine {record.key}: artifact {record.artifact!r} points outside the engine folder")
    return path


def verify_artifact(folder: Path, record: EngineRecord, *, pinned_sha256: str = "", origin: str = "") -> Path:
    """The artifact's path once its bytes match the record (and ``pinned_sha256`` when given)."""
    where = f" in {origin}" if origin else ""
    path = artifact_path(folder, record)
    if not os.path.lexists(path):
        raise IntegrityError(f"engine {record.key}{where}: artifact {record.artifact} is missing")
    digest, size = artifact_digest(path, most=record.size)
    if pinned_sha256 and pinned_sha256 != record.sha256:
        raise IntegrityError(
            f"engine {record.key}{where}: its record pins sha256 {record.sha256}, but the engine set pins "
            f"{pinned_sha256}: the record was replaced after the operator read it; refusing to serve it"
        )
    if digest != record.sha256 or size != record.size:
        found = f"more than {record.size} bytes" if size > record.size else f"sha256 {digest} ({size} bytes)"
        raise IntegrityError(
            f"engine {record.key}{where}: artifact {record.artifact} has {found}, but its "
            f"record pins {record.sha256} ({record.size} bytes): the bytes were changed or cut short after the "
            "build; refusing them. Delete the engine (trtop store gc, or remove its folder) to have it rebuilt"
        )
    return path


def install_checked(tmp: Path, final: Path, record: EngineRecord, origin: str) -> Path:
    """Make a fetched copy visible as ``final`` only once its artifact matches the record."""
    verify_artifact(tmp, record, origin=origin)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a concurrent fetch of the same key renamed first: keep that one
            raise
    return final


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``; IntegrityError when it is a link, FIFO, socket or device.

    O_NOFOLLOW refuses a link as the last component, O_NONBLOCK makes opening a FIFO return at
    once instead of waiting for a writer, and ``fstat`` of the opened descriptor (not of the
    name, which could be swapped in between) decides. FileNotFoundError passes through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):  # a link (O_NOFOLLOW); a socket
            raise IntegrityError(f"{path} is a link or a special file, not a regular file: refused") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(f"{path} is not a regular file (a FIFO, a device or a folder): refused")
        os.set_blocking(fd, True)  # a regular file's reads never wait anyway; plain file semantics from here
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sha256_file(path: Path, limit: int | None = None) -> tuple[str, int]:
    """(hex sha256, size) of the first ``limit`` bytes (all when None) of the regular file ``path``."""
    h = hashlib.sha256()
    size = 0
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(CHUNK if limit is None else min(CHUNK, limit - size)):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
