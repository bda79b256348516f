"""Triton's system shared memory extension: tensors handed over in ``/dev/shm`` regions, not in requests.

A client on the same host (in Kubernetes: a sidecar in the server's pod, which shares its
``/dev/shm``) creates a POSIX shared memory object, registers a window of it under a name
(``POST /v2/systemsharedmemory/region/{name}/register`` with ``{"key", "offset",
"byte_size"}``, or the gRPC ``SystemSharedMemoryRegister``), writes its input tensors
there and names the region in each request's input parameters (``shared_memory_region``,
``shared_memory_byte_size``, ``shared_memory_offset``) instead of sending the bytes; an
output can be asked into a region the same way. What ``tritonclient`` and ``perf_analyzer
--shared-memory system`` speak. For a 602 KB image the bytes then never cross a socket.

Off unless the server runs with ``--shared-memory system``: a client that may register
regions makes the server read and write any shared memory object of the pod it can name.
What is refused: names of objects outside ``/dev/shm`` (a key is one path component, no
``..``), POSIX semaphores (``sem.*``), windows beyond the object's end, reads and writes
beyond a region's window, more than ``MAX_REGIONS`` regions. A process that truncates an
object after registering it would make a read fault (SIGBUS); accesses look at the object's
size again when ``RECHECK_S`` has passed since the last look (a system call on every access
cost a one-process server 6% of its event loop: the GIL changes hands around it), which
narrows that to a short race the client runs against itself. With
front-end processes only the front-ends touch the regions (copying inputs into their arena,
outputs out of it), so such a fault takes one front-end down, which is replaced, not the engine.

One ``Registry`` per process. With front-ends the engine process holds the one that
counts: a front-end forwards registrations to it, and it sends every front-end the list of
regions (``specs``) after each change, before it answers, so a region is known to all of
them by the time its registration returns (``RemoteModel``, ``Dispatcher``).
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import stat
import time
from dataclasses import asdict, dataclass
from typing import Any

from trtop.serve.errors import BadRequest

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
MAX_REGIONS = 128
MAX_NAME_CHARS = 256
RECHECK_S = 0.005  # how stale an object's size may be when a window of it is read or written
# One path component under /dev/shm (shm_open's own rule, a leading "/" allowed), not a dot file.
_KEY = re.compile(r"/?[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
_RESERVED_PREFIXES = ("sem.",)  # POSIX named semaphores live beside the objects
CUDA_SHM_MESSAGE = ("the CUDA shared memory extension is not supported by this server; use system shared memory "
                    "(--shared-memory system) or send the tensors in the request")
OFF_MESSAGE = ("the system shared memory extension is off on this server (start it with --shared-memory system, "
               "or send the tensors in the request)")


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """A registered window: ``byte_size`` bytes from ``offset`` of the object ``key``, called ``name``."""
    name: str
    key: str
    offset: int
    byte_size: int

    def status(self) -> dict[str, Any]:
        return asdict(self)


class Region:
    """One registered window, mapped read-write."""

    def __init__(self, spec: RegionSpec, directory: str) -> None:
        self.spec = spec
        path = os.path.join(directory, spec.key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BadRequest(f"shared memory region {spec.name!r}: no shared memory object {spec.key!r} exists "
                             f"on this host (create it before registering it)") from None
        except OSError as exc:
            raise BadRequest(f"shared memory region {spec.name!r}: object {spec.key!r} cannot be opened: "
                             f"{exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadRequest(f"shared memory region {spec.name!r}: {spec.key!r} is not a shared memory object")
            if info.st_size < spec.offset + spec.byte_size:
                raise BadRequest(f"shared memory region {spec.name!r}: object {spec.key!r} has {info.st_size} bytes, "
                                 f"fewer than offset {spec.offset} + byte_size {spec.byte_size}")
            start = spec.offset - spec.offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets are page-aligned
            self._delta = spec.offset - start
            self._map = mmap.mmap(fd, self._delta + spec.byte_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # kept to see the object's size again (RECHECK_S)
        self._checked = time.monotonic()

    def window(self, offset: int, nbytes: int, what: str) -> memoryview:
        """``nbytes`` of the window from ``offset`` (a writable view, no copy)."""
        spec = self.spec
        if offset < 0 or nbytes < 0 or offset + nbytes > spec.byte_size:
            raise BadRequest(f"{what}: {nbytes} bytes at offset {offset} of shared memory region {spec.name!r} "
                             f"pass its end ({spec.byte_size} bytes)")
        now = time.monotonic()
        if now - self._checked > RECHECK_S:
            if os.fstat(self._fd).st_size < spec.offset + spec.byte_size:  # truncated since: reading would fault
                raise BadRequest(f"{what}: shared memory object {spec.key!r} of region {spec.name!r} shrank below "
                                 "the registered window; register it again")
            self._checked = now
        start = self._delta + offset
        return memoryview(self._map)[start:start + nbytes]

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a request still holds a view: the mapping goes with the last one
            pass
        os.close(self._fd)


class Registry:
    """The regions registered with this process, by name."""

    def __init__(self, enabled: bool, directory: str = SHM_DIR) -> None:
        self.enabled = enabled
        self.directory = directory
        self._regions: dict[str, Region] = {}

    def __len__(self) -> int:
        return len(self._regions)

    def specs(self) -> tuple[RegionSpec, ...]:
        return tuple(r.spec for r in self._regions.values())

    def register(self, spec: RegionSpec) -> None:
        """Check and map a new region (BadRequest with what is wrong)."""
        if not self.enabled:
            raise BadRequest(OFF_MESSAGE)
        check_spec(spec)
        if spec.name in self._regions:
            raise BadRequest(f"shared memory region {spec.name!r} is already registered; unregister it first")
        if len(self._regions) >= MAX_REGIONS:
            raise BadRequest(f"this server holds {MAX_REGIONS} shared memory regions, its limit; unregister some")
        self._regions[spec.name] = Region(spec, self.directory)

    def unregister(self, name: str | None) -> None:
        """Forget one region (no error when it is not registered, as Triton) or, with None, all."""
        names = list(self._regions) if name is None else [name]
        for n in names:
            region = self._regions.pop(n, None)
            if region is not None:
                region.close()

    def status(self, name: str | None) -> list[dict[str, Any]]:
        if name is None:
            return [r.spec.status() for r in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise BadRequest(f"no shared memory region {name!r} is registered")
        return [region.spec.status()]

    def window(self, name: Any, offset: Any, nbytes: int, what: str) -> memoryview:
        """The bytes a request names (``shared_memory_region`` and ``shared_memory_offset`` parameters)."""
        if not self.enabled:
            raise BadRequest(f"{what}: {OFF_MESSAGE}")
        region = self._regions.get(name) if isinstance(name, str) else None
        if region is None:
            raise BadRequest(f"{what}: no shared memory region {name!r} is registered")
        if not _is_int(offset):
            raise BadRequest(f"{what}: shared_memory_offset must be a non-negative integer, got {offset!r}")
        return region.window(offset, nbytes, what)

    def follow(self, specs: tuple[RegionSpec, ...]) -> None:
        """Make this registry hold exactly ``specs`` (a front-end following the engine process's)."""
        wanted = {s.name: s for s in specs}
        for name, region in list(self._regions.items()):
            if wanted.get(name) != region.spec:
                self.unregister(name)
        for spec in specs:
            if spec.name not in self._regions:
                try:
                    self._regions[spec.name] = Region(spec, self.directory)
                except BadRequest as exc:  # gone between the engine's check and ours: requests naming it fail
                    log.warning("%s", exc)

    def close(self) -> None:
        self.unregister(None)


def check_spec(spec: RegionSpec) -> None:
    if not spec.name or len(spec.name) > MAX_NAME_CHARS:
        raise BadRequest(f"a shared memory region's name must have 1 to {MAX_NAME_CHARS} characters")
    if not isinstance(spec.key, str) or not _KEY.fullmatch(spec.key) or \
            spec.key.lstrip("/").startswith(_RESERVED_PREFIXES):
        raise BadRequest(f"shared memory region {spec.name!r}: key {spec.key!r} is not the name of a shared memory "
                         "object (one path component of letters, digits, '.', '_' or '-', an optional leading '/')")
    if not _is_int(spec.offset) or not _is_int(spec.byte_size) or spec.byte_size <= 0:
        raise BadRequest(f"shared memory region {spec.name!r}: offset must be >= 0 and byte_size > 0 (integers), "
                         f"got {spec.offset!r} and {spec.byte_size!r}")


def spec_of(name: str, doc: Any) -> RegionSpec:
    """A registration's JSON body (``{"key", "offset", "byte_size"}``) as a spec (checked by ``register``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
        raise BadRequest('a registration must be a JSON object with "key", "offset" and "byte_size"')
    return RegionSpec(name, doc["key"], doc.get("offset", 0), doc.get("byte_size", 0))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
