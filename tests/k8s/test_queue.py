"""The work queue coalesces events per object, never runs one object twice at once, backs off."""
import asyncio

from trtop.handlers.queue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


def test_events_for_one_object_coalesce():
    async def body():
        q = WorkQueue()
        for _ in range(5):
            q.add("a")
        q.add("b")
        assert len(q) == 2
        assert {await q.get(), await q.get()} == {"a", "b"}
    run(body())


def test_an_object_being_processed_is_queued_again_after_done_not_twice():
    async def body():
        q = WorkQueue()
        q.add("a")
        assert await q.get() == "a"
        q.add("a")
        q.add("a")
        assert len(q) == 0  # not handed to a second worker
        q.done("a")
        assert len(q) == 1 and await q.get() == "a"
    run(body())


def test_retries_back_off_exponentially_up_to_the_cap_and_forget_resets():
    clock = Clock()
    q = WorkQueue(base_delay=1.0, max_delay=10.0, clock=clock)
    assert [q.retry("a") for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    q.forget("a")
    assert q.retry("a") == 1.0


def test_a_sooner_add_wins_over_a_later_retry():
    async def body():
        clock = Clock()
        q = WorkQueue(clock=clock)
        q.add("a", delay=60)
        q.add("a")
        assert await asyncio.wait_for(q.get(), 1) == "a"
    run(body())


def test_progress_age_grows_only_while_work_waits_without_progress():
    clock = Clock()
    q = WorkQueue(clock=clock)
    assert q.progress_age() == 0.0
    q.add("a")
    clock.t += 50
    assert q.progress_age() == 50
    q.add("b", delay=1000)  # not due: does not count
    async def take():
        return await q.get()
    assert asyncio.run(take()) == "a"
    clock.t += 20
    assert q.progress_age() == 20  # running for 20 s
    q.done("a")
    assert q.progress_age() == 0.0


def test_a_burst_of_delayed_adds_is_one_item_due_at_the_first_ones_window():
    async def body():
        clock = Clock()
        q = WorkQueue(clock=clock)
        q.add("a", delay=2)
        clock.t += 1.5
        q.add("a", delay=2)  # later than the queued one: coalesced, not pushed back
        assert len(q) == 1
        clock.t += 0.5
        assert await asyncio.wait_for(q.get(), 1) == "a" and len(q) == 0
    run(body())
