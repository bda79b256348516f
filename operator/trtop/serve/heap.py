"""The collector's settings for a serving process.

Requests allocate and free many small containers (dicts, tuples, futures); almost all of them are freed
by reference counting, yet the collector's youngest generation was walked every 700 net allocations and
whatever survived climbed into the older ones, which hold everything start-up made (modules, the model,
its sessions) and were walked again and again: ~3% of the event loop's time and longer tails at a light
model's request rate (docs/server-measured.md, eleventh session: 5,905 -> 6,683 req/s at 64 connections).
"""
from __future__ import annotations

import gc

# Net allocations between young collections (Python's default is 700). Only objects in reference cycles
# wait for a collection; requests make few, so a larger threshold costs little memory.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Once the process is set up: what exists now leaves the collector's generations for good (``gc.freeze``:
    no full collection walks it again) and young collections are rarer."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
