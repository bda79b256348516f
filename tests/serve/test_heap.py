"""The collector's settings a serving process takes once it is set up."""
from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from trtop.serve.heap import GC_YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_what_exists_is_frozen_and_young_collections_are_rarer(restored: None) -> None:
    gc.unfreeze()
    kept = [[i] for i in range(1000)]  # live containers made during set-up
    _, older_before, oldest_before = gc.get_threshold()
    settle_heap()
    assert gc.get_freeze_count() >= len(kept)
    young, older, oldest = gc.get_threshold()
    assert young == GC_YOUNG_THRESHOLD > 700 and (older, oldest) == (older_before, oldest_before)
