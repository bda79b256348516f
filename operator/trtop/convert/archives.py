"""Unpack a downloaded model archive (.tar.gz / .tgz / .tar / .zip) safely.

Each member must land inside the target folder (no absolute names, no ``..``: zip/tar
slip), must be a plain file or folder (no links, devices or fifos), and the archive may
unpack to at most ``max_extracted_bytes`` in at most ``max_files`` members: sizes are
counted while writing, not taken from headers, so a zip bomb stops at the cap. A name may
appear once and a file may not stand where a folder does; a tar's pax / GNU long-name
block may not exceed ``MAX_TAR_HEADER`` (tarfile reads one whole into memory, outside any
cap). Refusals, and archives Python cannot read (encrypted, corrupt, an unknown
compression), are user errors (exit 2). Called by ``source``.
"""
from __future__ import annotations

import errno
import gzip
import io
import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from trtop.api.fetch import FetchPolicy
from trtop.convert.errors import ModelFormatError, TooLargeError, UnsafeArchiveError
from trtop.convert.guard import Deadline

ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK = 1 << 20
MAX_TAIL = 1 << 20  # bytes after a tar's end marker: its padding (a record, 10 KiB by default), never more
MAX_TAR_HEADER = 1 << 20  # bytes of one pax / GNU long-name block: names and attributes, never megabytes
_LONG_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)


def unpack(path: Path, policy: FetchPolicy, deadline: Deadline) -> Path:
    """The folder an archive unpacks to (its single top folder when it has one); other paths unchanged."""
    name = path.name.lower()
    if not path.is_file() or not name.endswith(ARCHIVES):
        return path
    out = path.parent / "unpacked"
    out.mkdir()
    budget = _Budget(policy, path.name)
    try:
        if name.endswith(".zip"):
            _unzip(path, out, budget, deadline)
        else:
            _untar(path, out, budget, deadline)
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError,
            NotImplementedError, RecursionError) as e:  # NotImplementedError: a zip method Python lacks; RecursionError: tar headers
        raise ModelFormatError(f"{path.name}: not a readable archive ({e})") from e
    entries = list(out.iterdir())
    # An archive of one top folder (tar czf m.tgz saved_model/) is that folder.
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


class _Budget:
    def __init__(self, policy: FetchPolicy, archive: str) -> None:
        self.bytes_left, self.files_left, self.archive = policy.max_extracted_bytes, policy.max_files, archive
        self.cap_bytes, self.cap_files = policy.max_extracted_bytes, policy.max_files
        self.seen: set[Path] = set()

    def member(self, target: Path, name: str, is_dir: bool) -> None:
        if target in self.seen and not is_dir:
            raise UnsafeArchiveError(f"{self.archive}: member {name!r} appears more than once")
        self.seen.add(target)
        self.files_left -= 1
        if self.files_left < 0:
            raise TooLargeError(f"{self.archive}: more than {self.cap_files} members (fetch.maxFiles)")

    def spend(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise TooLargeError(f"{self.archive}: unpacks to more than {self.cap_bytes} bytes "
                                "(fetch.maxExtractedBytes); an archive bomb, or raise the cap")


class _TarInfo(tarfile.TarInfo):
    """A tar header that refuses an oversized pax / GNU long-name block before tarfile reads it into memory."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _TarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _LONG_HEADERS and info.size > MAX_TAR_HEADER:
            raise TooLargeError(f"a tar header block of {info.size} bytes (a pax or GNU long-name block may hold at "
                                f"most {MAX_TAR_HEADER}): an archive bomb")
        return info


@contextmanager
def _placing(name: str, archive: str) -> Iterator[None]:
    """File system refusals while placing a member, as the user errors they are."""
    try:
        yield
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as e:
        raise UnsafeArchiveError(f"{archive}: member {name!r} collides with another member (a file and a folder "
                                 "of one name)") from e
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        raise ModelFormatError(f"{archive}: member {name[:200]!r} is too long for a file name") from None


def _target(out: Path, name: str, archive: str) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or ":" in pure.parts[0]:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would land outside the unpack folder (archive slip)")
    target = out.joinpath(*[p for p in pure.parts if p != "."])
    if not target.resolve().is_relative_to(out.resolve()):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would land outside the unpack folder (archive slip)")
    return target


def _write(src: IO[bytes], target: Path, budget: _Budget, deadline: Deadline) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        while chunk := src.read(CHUNK):
            budget.spend(len(chunk))
            deadline.left()
            f.write(chunk)


def _unzip(path: Path, out: Path, budget: _Budget, deadline: Deadline) -> None:
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            target = _target(out, info.filename, path.name)
            budget.member(target, info.filename, info.is_dir())
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no file type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(f"{path.name}: member {info.filename!r} is a link or a special file")
            if info.flag_bits & 0x1:
                raise ModelFormatError(f"{path.name}: member {info.filename!r} is encrypted; give an archive "
                                       "without a password")
            with _placing(info.filename, path.name):
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                with z.open(info) as src:
                    _write(src, target, budget, deadline)


def _untar(path: Path, out: Path, budget: _Budget, deadline: Deadline) -> None:
    with tarfile.open(path, tarinfo=_TarInfo) as t:
        for member in t:
            target = _target(out, member.name, path.name)
            budget.member(target, member.name, member.isdir())
            if not member.isdir() and not member.isfile():
                raise UnsafeArchiveError(f"{path.name}: member {member.name!r} is a link or a special file")
            with _placing(member.name, path.name):
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                src = t.extractfile(member)
                if src is None:
                    raise UnsafeArchiveError(f"{path.name}: member {member.name!r} has no data")
                with src:
                    _write(src, target, budget, deadline)
        _to_the_end(t, path.name)


def _to_the_end(t: tarfile.TarFile, archive: str) -> None:
    """Reads a compressed tar's stream past its end-of-archive marker to the end, which checks the
    gzip / xz checksums (tarfile stops at the marker: a corrupted .tgz unpacked without a word).
    What follows the marker is padding: at most ``MAX_TAIL`` bytes of it."""
    stream = t.fileobj
    if stream is None or not hasattr(stream, "read") or isinstance(stream, io.BufferedReader):
        return  # a plain .tar: no checksum to check
    left = MAX_TAIL
    while chunk := stream.read(CHUNK):
        left -= len(chunk)
        if left < 0:
            raise UnsafeArchiveError(f"{archive}: more than {MAX_TAIL} bytes after the end of the archive")
