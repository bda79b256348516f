"""The shared arena: allocation bookkeeping and views shared between two mappings."""
from __future__ import annotations

import os

import numpy as np
import pytest

from trtop.serve.arena import ALIGN, Allocator, Arena


class TestAllocator:
    def test_regions_are_aligned_and_do_not_overlap(self) -> None:
        a = Allocator(4096)
        offsets = [a.alloc(n) for n in (1, 100, 65, 64)]
        assert all(o is not None and o % ALIGN == 0 for o in offsets)
        assert offsets == [0, 64, 192, 320]  # 65 bytes take two lines

    def test_full_arena_refuses_then_frees_and_merges(self) -> None:
        a = Allocator(256)
        first, second = a.alloc(128), a.alloc(128)
        assert a.alloc(1) is None
        assert first is not None and second is not None
        a.free(first)
        a.free(second)
        assert a.used_bytes == 0 and a.alloc(256) == 0  # both halves merged back into one region

    def test_freeing_in_any_order_restores_the_whole_space(self) -> None:
        a = Allocator(64 * 10)
        got = [a.alloc(64) for _ in range(10)]
        for i in (3, 1, 2, 9, 0, 5, 4, 8, 6, 7):
            a.free(got[i])  # type: ignore[arg-type]
        assert a.alloc(640) == 0

    def test_unknown_region_is_an_error(self) -> None:
        with pytest.raises(KeyError):
            Allocator(256).free(64)


class TestArena:
    def test_two_mappings_of_one_arena_share_bytes(self) -> None:
        engine = Arena.create(1 << 16)
        frontend = Arena(os.dup(engine.fd), engine.size)
        try:
            frontend.view(128, "float32", (2, 3))[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
            np.testing.assert_array_equal(engine.view(128, "float32", (2, 3)), [[0, 1, 2], [3, 4, 5]])
        finally:
            frontend.close()
            engine.close()

    def test_offset_of_finds_views_and_refuses_foreign_arrays(self) -> None:
        arena = Arena.create(4096)
        try:
            v = arena.view(256, "int64", (4,))
            assert arena.offset_of(v) == 256
            assert arena.offset_of(np.zeros(4)) is None
            assert arena.offset_of(arena.view(0, "float32", (4, 4))[:, 1]) is None  # not contiguous
        finally:
            arena.close()

    def test_views_outside_the_arena_are_refused(self) -> None:
        arena = Arena.create(4096)
        try:
            with pytest.raises(ValueError, match="does not fit"):
                arena.view(4000, "float32", (100,))
        finally:
            arena.close()
