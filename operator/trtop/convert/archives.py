"""Unpack a downloaded model archive (.tar.gz / .tgz / .tar / .zip) safely.

Each member must land inside the target folder (no absolute names, no ``..``: zip/tar
slip), must be a plain file or folder (no links, devices or fifos), and the archive may
unpack to at most ``max_extracted_bytes`` in at most ``max_files`` members: sizes are
counted while writing, not taken from headers, so a zip bomb stops at the cap. Refusals
are user errors (exit 2). Called by ``source``.
"""
from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from trtop.api.fetch import FetchPolicy
from trtop.convert.errors import ModelFormatError, TooLargeError, UnsafeArchiveError
from trtop.convert.guard import Deadline

ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK = 1 << 20


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
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise ModelFormatError(f"{path.name}: not a readable archive ({e})") from e
    entries = list(out.iterdir())
    # An archive of one top folder (tar czf m.tgz saved_model/) is that folder.
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


class _Budget:
    def __init__(self, policy: FetchPolicy, archive: str) -> None:
        self.bytes_left, self.files_left, self.archive = policy.max_extracted_bytes, policy.max_files, archive
        self.cap_bytes, self.cap_files = policy.max_extracted_bytes, policy.max_files

    def member(self) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise TooLargeError(f"{self.archive}: more than {self.cap_files} members (fetch.maxFiles)")

    def spend(self, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise TooLargeError(f"{self.archive}: unpacks to more than {self.cap_bytes} bytes "
                                "(fetch.maxExtractedBytes); an archive bomb, or raise the cap")


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
            budget.member()
            target = _target(out, info.filename, path.name)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no file type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(f"{path.name}: member {info.filename!r} is a link or a special file")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with z.open(info) as src:
                _write(src, target, budget, deadline)


def _untar(path: Path, out: Path, budget: _Budget, deadline: Deadline) -> None:
    with tarfile.open(path) as t:
        for member in t:
            budget.member()
            target = _target(out, member.name, path.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise UnsafeArchiveError(f"{path.name}: member {member.name!r} is a link or a special file")
            src = t.extractfile(member)
            if src is None:
                raise UnsafeArchiveError(f"{path.name}: member {member.name!r} has no data")
            with src:
                _write(src, target, budget, deadline)
