"""Shared memory between a front-end process and the engine process: one arena per front-end.

The engine process makes the arena (an anonymous ``memfd``, so nothing is left behind in
``/dev/shm`` when a process dies) and hands its descriptor to the front-end it starts.
The front-end owns the allocation: it puts a request's input tensors and room for its
outputs in the arena and sends only offsets and shapes to the engine (``channel``); the
engine reads the inputs in place (numpy views, no copy), writes the outputs in place and
replies. The front-end frees a region only after the engine's reply for it, so the engine
never writes into memory that was given to another request.

The arena's size bounds the tensor bytes a front-end has in flight: when it is full the
request is refused with 503 + Retry-After before anything is queued.
Called by ``frontend`` (alloc/free/write) and ``dispatcher`` (views).
"""
from __future__ import annotations

import bisect
import math
import mmap
import os
from typing import Any

import numpy as np

from trtop.serve.types import Array

ALIGN = 64  # cache line: every tensor starts aligned (SIMD loads, pinned-copy friendly)
_DTYPES: dict[str, np.dtype[Any]] = {}  # dtype strings of descriptors ("<f4") -> dtype (np.dtype() per view costs)


def pad_before(start: int, lead: int) -> int:
    """Bytes to skip at ``start`` (an offset or an address) so that what follows ``lead`` bytes of a body (the
    tensors after a request's JSON header) starts on a cache line: ONNX Runtime's CPU provider ran a float
    tensor at an address that is not a multiple of 4 ~6x slower (trtop-http: ``padBefore``)."""
    return -(start + lead) % ALIGN


class Allocator:
    """First-fit allocation of aligned regions in ``size`` bytes; pure bookkeeping (offsets only)."""

    def __init__(self, size: int) -> None:
        if size < ALIGN:
            raise ValueError(f"an arena needs at least {ALIGN} bytes, got {size}")
        self.size = size - size % ALIGN
        self._free_starts: list[int] = [0]  # sorted starts of free regions
        self._free_sizes: dict[int, int] = {0: self.size}
        self._used: dict[int, int] = {}  # start -> size
        self.used_bytes = 0

    def alloc(self, nbytes: int) -> int | None:
        """The offset of a new region of at least ``nbytes`` (None when no free region is large enough)."""
        need = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        for start in self._free_starts:
            size = self._free_sizes[start]
            if size >= need:
                self._free_starts.remove(start)
                del self._free_sizes[start]
                if size > need:
                    rest = start + need
                    bisect.insort(self._free_starts, rest)
                    self._free_sizes[rest] = size - need
                self._used[start] = need
                self.used_bytes += need
                return start
        return None

    def free(self, offset: int) -> None:
        """Give a region back, merging it with free neighbours."""
        size = self._used.pop(offset)
        self.used_bytes -= size
        i = bisect.bisect_left(self._free_starts, offset)
        end = offset + size
        if i < len(self._free_starts) and self._free_starts[i] == end:  # merge with the next
            size += self._free_sizes.pop(end)
            self._free_starts.pop(i)
        if i > 0:
            prev = self._free_starts[i - 1]
            if prev + self._free_sizes[prev] == offset:  # merge with the previous
                self._free_sizes[prev] += size
                return
        self._free_starts.insert(i, offset)
        self._free_sizes[offset] = size

    @property
    def regions(self) -> int:
        return len(self._used)


class Arena:
    """A shared mapping of ``size`` bytes; numpy views into it by offset."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._base = np.frombuffer(self._map, dtype=np.uint8)
        self.address = int(self._base.ctypes.data)

    @classmethod
    def create(cls, size: int, name: str = "trtop-arena") -> Arena:
        """A new anonymous arena (the descriptor is close-on-exec; pass it with ``pass_fds``)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    def view(self, offset: int, dtype: str | np.dtype[Any], shape: tuple[int, ...]) -> Array:
        """An array over the arena's bytes at ``offset`` (no copy; writes are shared)."""
        dt = _DTYPES.get(dtype) if isinstance(dtype, str) else None
        if dt is None:
            dt = np.dtype(dtype)
            if isinstance(dtype, str) and len(_DTYPES) < 64:
                _DTYPES[dtype] = dt
        if offset < 0 or offset + math.prod(shape) * dt.itemsize > self.size:
            raise ValueError(f"{dt.name}{list(shape)} at offset {offset} does not fit an arena of {self.size} bytes")
        return np.ndarray(shape, dt, buffer=self._map, offset=offset)

    def bytes_at(self, offset: int, nbytes: int) -> memoryview:
        """A writable byte view of ``nbytes`` at ``offset`` (no copy)."""
        if offset < 0 or offset + nbytes > self.size:
            raise ValueError(f"{nbytes} bytes at offset {offset} do not fit an arena of {self.size} bytes")
        return memoryview(self._map)[offset:offset + nbytes]

    def offset_of(self, array: Array) -> int | None:
        """Where ``array`` lies in this arena when it is a contiguous view of it, else None."""
        if not array.flags.c_contiguous:
            return None
        start = int(array.ctypes.data) - self.address
        if 0 <= start and start + array.nbytes <= self.size:
            return start
        return None

    def release_fd(self) -> None:
        """Close the descriptor but keep the mapping (once the other process has its own)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self._base = np.empty(0, np.uint8)
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with it
            pass
        self.release_fd()
