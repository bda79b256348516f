"""The batching worker: real asyncio, a fake backend that records the batches it ran."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable

import numpy as np
import pytest

from trtop.serve.batching import BatchPolicy, RowsJudge, signature_of
from trtop.serve.errors import InferenceFailed, NotReady, Overloaded, TimedOut
from trtop.serve import scheduler as scheduler_module
from trtop.serve.scheduler import Scheduler
from trtop.serve.types import Feeds, Outputs


class FakeBackend:
    """y = 10 * x; remembers batch sizes; can block (gate) or fail on a poison value."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feeds: Feeds) -> Outputs:
        self.gate.wait(10)
        x = feeds["x"]
        if (x == -1).any():
            raise RuntimeError("poison")
        self.batches.append(x.shape[0])
        return {"y": x * 10}


class Observer:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.rows: list[int] = []

    def dequeued(self, waited_s: float) -> None:
        self.waits.append(waited_s)

    def batch_done(self, rows: int, compute_s: float) -> None:
        self.rows.append(rows)


def feeds(value: float, rows: int = 1, width: int = 2) -> tuple[Feeds, int, Hashable]:
    f = {"x": np.full((rows, width), value, np.float32)}
    return f, rows, signature_of(f)


async def submit(s: Scheduler, value: float, rows: int = 1, width: int = 2, timeout: float = 5.0) -> Outputs:
    f, r, sig = feeds(value, rows, width)
    return await s.submit(f, r, sig, timeout)


def recording_threads(backend: FakeBackend) -> tuple[Callable[[Feeds], Outputs], list[int]]:
    """``backend`` as a run function that notes the thread of every run."""
    threads: list[int] = []

    def run(f: Feeds) -> Outputs:
        threads.append(threading.get_ident())
        return backend(f)

    return run, threads


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


async def test_concurrent_requests_form_batches_and_get_their_own_rows(backend: FakeBackend) -> None:
    obs = Observer()
    s = Scheduler(backend, BatchPolicy(8, 0.05), max_queue=100, observer=obs)
    s.start()
    results = await asyncio.gather(*(submit(s, i, rows=1 + i % 2) for i in range(12)))
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full((1 + i % 2, 2), i * 10, np.float32))
    assert max(backend.batches) > 1 and all(b <= 8 for b in backend.batches)
    assert sum(backend.batches) == sum(1 + i % 2 for i in range(12)) == sum(obs.rows)
    assert len(obs.waits) == 12
    await s.close()


async def test_different_shapes_never_share_a_batch(backend: FakeBackend) -> None:
    s = Scheduler(backend, BatchPolicy(8, 0.05), max_queue=100)
    s.start()
    outs = await asyncio.gather(*(submit(s, i, width=2 + i % 2) for i in range(6)))
    assert [o["y"].shape[1] for o in outs] == [2, 3, 2, 3, 2, 3]
    assert sorted(backend.batches) == [3, 3]
    await s.close()


async def test_full_queue_is_refused_at_once(backend: FakeBackend) -> None:
    backend.gate.clear()  # the first batch blocks in the backend
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=2)
    s.start()
    first = asyncio.ensure_future(submit(s, 1))
    await asyncio.sleep(0.05)  # running, queue empty
    queued = [asyncio.ensure_future(submit(s, v)) for v in (2, 3)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="queue is full"):
        await submit(s, 4)
    backend.gate.set()
    assert [(await t)["y"][0, 0] for t in (first, *queued)] == [10, 20, 30]
    await s.close()


async def test_a_request_past_its_deadline_leaves_the_queue_and_never_runs(backend: FakeBackend) -> None:
    backend.gate.clear()  # the only instance is busy, so the next request queues
    s = Scheduler(backend, BatchPolicy(8, 10.0), max_queue=10)
    s.start()
    first = asyncio.ensure_future(submit(s, 1))
    await asyncio.sleep(0.02)
    with pytest.raises(TimedOut, match="waited 0.05s in the queue"):
        await submit(s, 2, timeout=0.05)
    assert s.queued == 0 and s.backlog_rows == -8
    backend.gate.set()
    assert (await first)["y"][0, 0] == 10
    await s.close()
    assert backend.batches == [1]


async def test_a_lone_request_runs_at_once_whatever_the_queue_delay(backend: FakeBackend) -> None:
    s = Scheduler(backend, BatchPolicy(8, 10.0), max_queue=10)
    s.start()
    out = await asyncio.wait_for(submit(s, 4), 1.0)  # would wait 10 s if the delay applied when idle
    assert out["y"][0, 0] == 40
    await s.close()


async def test_batches_run_at_bucket_sizes_and_each_request_gets_its_rows(backend: FakeBackend) -> None:
    backend.gate.clear()
    s = Scheduler(backend, BatchPolicy(8, 0.0, (1, 2, 4, 8)), max_queue=100)
    s.start()
    first = asyncio.ensure_future(submit(s, 100))
    await asyncio.sleep(0.02)
    rest = [asyncio.ensure_future(submit(s, v, rows=r)) for v, r in ((1, 1), (2, 2))]  # 3 rows: padded to 4
    await asyncio.sleep(0.02)
    backend.gate.set()
    outs = await asyncio.gather(first, *rest)
    assert backend.batches == [1, 4]
    assert [o["y"].shape[0] for o in outs] == [1, 1, 2] and outs[2]["y"][1, 0] == 20
    await s.close()


async def test_a_failing_request_fails_alone(backend: FakeBackend) -> None:
    s = Scheduler(backend, BatchPolicy(8, 0.05), max_queue=10)
    s.start()
    results = await asyncio.gather(submit(s, 1), submit(s, -1), submit(s, 3), return_exceptions=True)
    assert isinstance(results[1], InferenceFailed) and "poison" in str(results[1])
    assert [r["y"][0, 0] for r in (results[0], results[2])] == [10, 30]  # type: ignore[index]
    await s.close()


async def test_close_runs_what_is_queued_without_waiting_for_the_delay(backend: FakeBackend) -> None:
    s = Scheduler(backend, BatchPolicy(8, 30.0), max_queue=10)
    s.start()
    pending = [asyncio.ensure_future(submit(s, v)) for v in (1, 2)]
    await asyncio.sleep(0.01)
    await asyncio.wait_for(s.close(), 2)
    assert [(await t)["y"][0, 0] for t in pending] == [10, 20]
    with pytest.raises(NotReady):
        await submit(s, 3)


async def _one_running_one_queued_then_the_policy_fails_once(
        s: Scheduler, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch,
) -> tuple[asyncio.Future[Outputs], asyncio.Future[Outputs], list[int]]:
    """A batch held in the backend and a request queued behind it (it arrives busy: nothing but the scheduler takes
    it once the instance is free); then the batching policy fails its next call, and the backend lets go."""
    backend.gate.clear()
    s.start()
    first = asyncio.ensure_future(submit(s, 1))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(submit(s, 2))
    await asyncio.sleep(0.05)
    real, calls = scheduler_module.next_batch, []

    def failing_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the policy")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler_module, "next_batch", failing_once)
    backend.gate.set()
    return first, second, calls


async def test_a_worker_that_fails_is_logged_and_started_again(
        backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=10, instances=1)
    first, second, calls = await _one_running_one_queued_then_the_policy_fails_once(s, backend, monkeypatch)
    assert (await asyncio.wait_for(first, 2))["y"][0, 0] == 10
    assert (await asyncio.wait_for(second, 2))["y"][0, 0] == 20  # no arrival came to take it: the new worker did
    assert len(calls) >= 2 and "the batch worker failed (a bug in the policy)" in caplog.text
    await s.close()


async def test_instances_run_batches_side_by_side(backend: FakeBackend) -> None:
    backend.gate.clear()
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=10, instances=2)
    s.start()
    tasks = [asyncio.ensure_future(submit(s, v)) for v in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert s.queued == 1  # two batches are in the backend, the third waits for a free instance
    backend.gate.set()
    assert [(await t)["y"][0, 0] for t in tasks] == [10, 20, 30]
    await s.close()


async def test_it_says_when_every_instance_is_busy_and_when_one_is_free_again(backend: FakeBackend) -> None:
    backend.gate.clear()
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=10, instances=2)
    told: list[bool] = []
    s.on_full = told.append
    s.start()
    assert not s.threads_busy
    first = asyncio.ensure_future(submit(s, 1))
    await asyncio.sleep(0.05)
    assert told == []  # one instance is still free
    assert s.threads_busy  # its batch holds a compute thread (the event loop must not poll: awake.KeepAwake)
    rest = [asyncio.ensure_future(submit(s, v)) for v in (2, 3)]
    await asyncio.sleep(0.05)
    assert told == [True] and s.queued == 1  # the third waits: reading more would not start it sooner
    backend.gate.set()
    assert [(await t)["y"][0, 0] for t in (first, *rest)] == [10, 20, 30]
    await asyncio.sleep(0.05)
    assert told[-1] is False and told == [True, False] * (len(told) // 2)  # alternating, ending free
    assert not s.threads_busy
    await s.close()


def starts_and_answers(s: Scheduler) -> list[str]:
    """``s``'s batches, in order, as they start on a compute thread ("start 1") and as their requests are answered
    ("answer 1"; the value of the batch's first request)."""
    order: list[str] = []
    launch, finished = s._launch, s._finished
    s._launch = lambda loop, items, *a: (order.append(f"start {items[0].feeds['x'][0, 0]:g}"),  # type: ignore
                                         launch(loop, items, *a))[1]
    s._finished = lambda items, *a: (order.append(f"answer {items[0].feeds['x'][0, 0]:g}"),  # type: ignore
                                     finished(items, *a))[1]
    return order


async def test_a_batch_that_lands_starts_the_next_before_its_own_requests_are_answered(backend: FakeBackend) -> None:
    """With one instance (a GPU), the batch waiting in the queue leaves for the compute thread in the callback that
    lands the one before, ahead of that one's answers: the device idles from one batch's end to the next start."""
    backend.gate.clear()
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=10, instances=1, inline_max_s=0.0, inline_alone_max_s=0.0,
                  land_starts=True)
    order = starts_and_answers(s)
    s.start()
    tasks = [asyncio.ensure_future(submit(s, v)) for v in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert order == ["start 1"] and s.queued == 2
    backend.gate.set()
    assert [(await t)["y"][0, 0] for t in tasks] == [10, 20, 30]
    assert order == ["start 1", "start 2", "answer 1", "start 3", "answer 2", "answer 3"]
    await s.close()
    backend.gate.clear()
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=10, instances=1, inline_max_s=0.0, inline_alone_max_s=0.0)
    order = starts_and_answers(s)
    s.start()
    tasks = [asyncio.ensure_future(submit(s, v)) for v in (1, 2)]
    await asyncio.sleep(0.05)
    backend.gate.set()
    await asyncio.gather(*tasks)
    assert order == ["start 1", "answer 1", "start 2", "answer 2"]  # without land_starts: the worker's turn, after
    await s.close()


async def test_where_taking_the_next_batch_fails_as_one_lands_its_requests_are_answered_and_the_worker_goes_on(
        backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=10, instances=1, land_starts=True)
    first, second, _ = await _one_running_one_queued_then_the_policy_fails_once(s, backend, monkeypatch)
    assert (await asyncio.wait_for(first, 2))["y"][0, 0] == 10
    assert (await asyncio.wait_for(second, 2))["y"][0, 0] == 20  # the worker took it
    assert "taking the next batch failed (a bug in the policy)" in caplog.text
    await s.close()


async def test_a_landing_batch_leaves_a_next_batch_that_runs_inline_to_the_worker_after_its_answers(
        backend: FakeBackend) -> None:
    """A short batch runs on the event loop; started where a batch lands, it would hold that batch's answers back,
    so the worker task runs it, after them."""
    run, threads = recording_threads(backend)
    backend.gate.clear()
    s = Scheduler(run, BatchPolicy(1, 0.0), max_queue=10, inline_max_s=1.0, land_starts=True)
    s.start()
    first = s.enqueue(*feeds(1), 5.0)  # batch 1's time not known yet: a compute thread
    await asyncio.sleep(0.05)
    answered_first: list[bool] = []
    original = s._run_inline
    s._run_inline = lambda items, *a: (answered_first.append(first.done()), original(items, *a))[1]  # type: ignore
    second = s.enqueue(*feeds(2), 5.0)  # queued behind the first; known short once the first lands
    await asyncio.sleep(0.05)
    backend.gate.set()
    assert (await first)["y"][0, 0] == 10 and (await second)["y"][0, 0] == 20
    assert threads[1] == threading.get_ident()  # the second ran inline
    assert answered_first == [True]
    await s.close()


async def test_the_backlog_is_the_queued_rows_beyond_every_instances_next_batch(backend: FakeBackend) -> None:
    backend.gate.clear()
    s = Scheduler(backend, BatchPolicy(4, 10.0), max_queue=10, instances=2)
    s.start()
    assert s.backlog_rows == -8  # room for two batches of 4
    running = [asyncio.ensure_future(submit(s, v, rows=r)) for v, r in ((1, 3), (2, 2))]
    await asyncio.sleep(0.05)  # both instances busy, nothing queued
    assert s.queued == 0 and s.backlog_rows == -8
    queued = [asyncio.ensure_future(submit(s, v, rows=r)) for v, r in ((3, 4), (4, 3), (5, 4))]
    await asyncio.sleep(0.05)
    assert s.queued == 3 and s.backlog_rows == 3  # 11 rows wait: 3 of them cannot make the next two batches
    backend.gate.set()
    assert [(await t)["y"][0, 0] for t in (*running, *queued)] == [10, 20, 30, 40, 50]
    assert s.backlog_rows == -8
    await s.close()


async def test_a_known_short_run_on_an_idle_scheduler_runs_inline_on_the_event_loop(backend: FakeBackend) -> None:
    run, threads = recording_threads(backend)
    s = Scheduler(run, BatchPolicy(8, 0.0, (1, 2, 4, 8)), max_queue=10, inline_max_s=1.0)
    s.start()
    await submit(s, 1)  # the first run of a size is timed on a compute thread
    assert (await submit(s, 2))["y"][0, 0] == 20  # known to be short now: it runs inline
    assert threads[0] != threading.get_ident() and threads[1] == threading.get_ident()
    await s.close()


async def test_short_requests_read_in_one_round_of_the_loop_run_inline_as_one_batch(backend: FakeBackend) -> None:
    """Requests queued by the I/O callbacks of one round (here: one callback) wait for the round to end
    and run together: a short run started where it was queued ran every request alone under load."""
    run, threads = recording_threads(backend)
    s = Scheduler(run, BatchPolicy(8, 0.0, (1, 2, 4, 8)), max_queue=10, inline_max_s=1.0)
    s.start()
    for rows in (1, 2, 4):  # the first run of each size is timed on a compute thread
        await submit(s, 1, rows)
    backend.batches.clear()
    futures = [s.enqueue(*feeds(v, 1, 2), 5.0) for v in (1, 2, 3, 4)]  # four arrivals, one callback
    assert not any(f.done() for f in futures)  # nothing ran where it was queued
    outs = [await f for f in futures]
    assert [o["y"][0, 0] for o in outs] == [10, 20, 30, 40]
    assert backend.batches == [4] and threads[-1] == threading.get_ident()  # one batch, inline
    await s.close()


async def test_runs_not_known_to_be_short_never_block_the_event_loop(backend: FakeBackend) -> None:
    run, threads = recording_threads(backend)
    s = Scheduler(run, BatchPolicy(8, 0.0), max_queue=10, inline_max_s=0.0, inline_alone_max_s=0.0)
    s.start()
    for v in range(3):
        await submit(s, v)
    assert threading.get_ident() not in threads
    await s.close()


async def test_a_lone_request_known_to_be_brief_enough_runs_on_the_event_loop(backend: FakeBackend) -> None:
    """With nothing else queued or running, a request whose batch size is known to take under
    ``inline_alone_max_s`` skips the hops to a compute thread and back; with company, or longer, it does not."""
    run, threads = recording_threads(backend)
    s = Scheduler(run, BatchPolicy(8, 0.0), max_queue=10, inline_max_s=0.0, inline_alone_max_s=0.5)
    s.start()
    loop_thread = threading.get_ident()
    await submit(s, 1)  # batch 1's time not known yet: a compute thread
    await submit(s, 2)  # known now, and alone
    assert threads[0] != loop_thread and threads[1] == loop_thread
    together = await asyncio.gather(*(submit(s, v) for v in (3, 4, 5)))  # several at once: never on the loop
    assert [o["y"][0, 0] for o in together] == [30, 40, 50] and loop_thread not in threads[2:]
    await s.close()
    slow = Scheduler(run, BatchPolicy(8, 0.0), max_queue=10, inline_max_s=0.0, inline_alone_max_s=1e-9)
    slow.start()
    threads.clear()
    for v in range(3):  # alone, but longer than the bound
        await submit(slow, v)
    assert loop_thread not in threads
    await slow.close()


async def test_a_runtime_with_its_own_threads_runs_every_batch_there(backend: FakeBackend) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names: list[str] = []

    def run(f: Feeds) -> Outputs:
        names.append(threading.current_thread().name)
        return backend(f)

    own = ThreadPoolExecutor(1, thread_name_prefix="runtime-slot")
    s = Scheduler(run, BatchPolicy(8, 0.0), max_queue=10, inline_max_s=1.0, executor=own)
    s.start()
    for v in range(3):  # short runs, but never inline: the runtime's threads own its GPU state
        assert (await submit(s, v))["y"][0, 0] == 10 * v
    assert names and all(n.startswith("runtime-slot") for n in names)
    await s.close()
    own.shutdown()


async def test_with_the_runtimes_own_threads_a_lone_request_runs_on_the_loop_only_at_its_loop_sizes_and_while_quiet(
        backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU runtime that keeps a session on the event loop's thread (``loop_sizes``) takes a lone request
    there (no hop to a slot and back); any other size, and every request while requests meet in the server
    (within ``QUIET_S``), goes to its own threads, so a run on the loop never holds a second request back
    from a free slot."""
    from concurrent.futures import ThreadPoolExecutor

    from trtop.serve import scheduler

    names: list[str] = []

    def run(f: Feeds) -> Outputs:
        names.append(threading.current_thread().name)
        return backend(f)

    now = [100.0]
    monkeypatch.setattr(scheduler, "QUIET_S", 1.0)
    own = ThreadPoolExecutor(2, thread_name_prefix="runtime-slot")
    s = Scheduler(run, BatchPolicy(8, 0.0, (1, 2, 4, 8)), max_queue=10, instances=2, executor=own,
                  loop_sizes=frozenset({1}), clock=lambda: now[0])
    s.start()
    loop_name = threading.current_thread().name
    await submit(s, 1)  # batch 1's time not known yet: a slot
    await submit(s, 2)  # known, alone, quiet: the loop
    await submit(s, 3, rows=2)  # alone, but size 2 has no session on the loop
    await submit(s, 3, rows=2)
    assert names[0].startswith("runtime-slot") and names[1] == loop_name
    assert all(n.startswith("runtime-slot") for n in names[2:])
    names.clear()
    together = [s.enqueue(*feeds(v), timeout_s=5.0) for v in (4.0, 5.0)]  # two requests meet in the server
    assert [(await f)["y"][0, 0] for f in together] == [40, 50]
    await submit(s, 6)  # alone again, but requests met less than QUIET_S ago
    assert names and all(n.startswith("runtime-slot") for n in names)
    now[0] += 1.5  # quiet for longer than QUIET_S
    await submit(s, 7)
    assert names[-1] == loop_name
    await s.close()
    own.shutdown()


async def test_a_request_that_finds_an_instance_free_starts_without_waiting_for_the_worker_task(
        backend: FakeBackend) -> None:
    """An idle scheduler starts a request's batch right after the callback that queued it, not on the worker
    task's turn (waking it cost a lone GPU request ~25 us more): here the worker never runs at all. Requests
    queued by one callback (a front-end's message of descriptors) still share a batch."""
    s = Scheduler(backend, BatchPolicy(8, 0.0), max_queue=10, inline_max_s=0.0)  # no start()
    assert (await asyncio.wait_for(submit(s, 1.0), 5))["y"][0, 0] == 10
    together = [s.enqueue(*feeds(v), timeout_s=5.0) for v in (2.0, 3.0, 4.0)]  # one callback
    assert [(await f)["y"][0, 0] for f in together] == [20, 30, 40]
    assert len(backend.batches) == 2 and backend.batches[1] >= 3  # the three in one batch


async def test_deadlines_hold_for_every_request_whatever_the_order_of_their_timeouts(backend: FakeBackend) -> None:
    """One timer serves every deadline: a short timeout behind a long one still expires on time, a running
    request past its deadline is answered with TimedOut, and requests within theirs are served."""
    backend.gate.clear()  # the first batch blocks in the backend
    s = Scheduler(backend, BatchPolicy(1, 0.0), max_queue=10)
    s.start()
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(submit(s, 1, timeout=0.3))
    await asyncio.sleep(0.02)
    patient = asyncio.ensure_future(submit(s, 2, timeout=10))
    started = loop.time()
    with pytest.raises(TimedOut, match="waited 0.05s in the queue"):
        await submit(s, 3, timeout=0.05)  # queued behind a 10 s deadline
    assert loop.time() - started < 0.25
    with pytest.raises(TimedOut, match="did not finish within 0.3s"):
        await running
    backend.gate.set()
    assert (await patient)["y"][0, 0] == 20
    await s.close()
    assert s.queued == 0


async def test_a_backend_that_takes_the_requests_unmerged_gets_them_as_they_are(backend: FakeBackend) -> None:
    """A GPU backend copies each request's rows to the device itself (no merged copy on the host); where it
    cannot (it answers None) the batch is merged as before. Each request still gets its own rows."""
    seen: list[tuple[list[int], int]] = []
    declined = {"now": False}

    def run_rows(parts: list[Feeds], size: int) -> Outputs | None:
        if declined["now"]:
            return None
        seen.append(([p["x"].shape[0] for p in parts], size))
        rows = np.concatenate([p["x"] for p in parts])
        rows = np.concatenate([rows, np.repeat(rows[-1:], size - rows.shape[0], 0)])  # padded like merge
        return {"y": rows * 10}

    for decline in (False, True):
        declined["now"] = decline
        backend.gate.clear()
        backend.batches.clear()
        s = Scheduler(backend, BatchPolicy(8, 0.0, (1, 2, 4, 8)), max_queue=100, run_rows=run_rows)
        s.start()
        first = asyncio.ensure_future(submit(s, 100))  # alone: the plain run (nothing to merge)
        await asyncio.sleep(0.02)
        rest = [asyncio.ensure_future(submit(s, v, rows=r)) for v, r in ((1, 1), (2, 2))]  # 3 rows -> bucket 4
        await asyncio.sleep(0.02)
        backend.gate.set()
        outs = await asyncio.gather(first, *rest)
        assert [o["y"][:, 0].tolist() for o in outs] == [[1000], [10], [20, 20]]
        assert backend.batches == ([1] if not decline else [1, 4])
        await s.close()
    assert seen == [([1, 2], 4)]


async def test_a_batch_runs_its_rows_one_at_a_time_where_rows_go_apart(backend: FakeBackend) -> None:
    """``rows_apart`` (merging does not pay on these cores): the rows a batch took run one
    after another on its compute thread, one run each (no merge, no padding to the bucket), and each request
    still gets its own outputs; one decision and one hop for the lot."""
    obs = Observer()
    s = Scheduler(backend, BatchPolicy(8, 0.0, (1, 2, 4, 8)), max_queue=100, observer=obs,
                  rows_judge=RowsJudge(4, apart=True))
    s.start()
    backend.gate.clear()
    first = asyncio.ensure_future(submit(s, 100))  # alone: it holds the only instance
    await asyncio.sleep(0.02)
    rest = [asyncio.ensure_future(submit(s, v, rows=r)) for v, r in ((1, 1), (2, 2), (3, 1))]
    await asyncio.sleep(0.02)
    backend.gate.set()
    outs = await asyncio.gather(first, *rest)
    assert [o["y"][:, 0].tolist() for o in outs] == [[1000], [10], [20, 20], [30]]
    assert backend.batches == [1, 1, 1, 1, 1]  # merged, the three would have run as one batch of 4
    assert obs.rows == [1, 4] and s.batches == 2
    # A request of several rows (a native front-end's group, or a client's own batch) runs row by row too.
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = await s.submit({"x": x}, 3, signature_of({"x": x}), 5.0)
    np.testing.assert_array_equal(out["y"], x * 10)
    assert backend.batches[-3:] == [1, 1, 1]
    await s.close()


async def test_served_batches_overturn_the_way_start_up_chose(caplog: pytest.LogCaptureFixture) -> None:
    """Start-up chose merged, but served a merged batch of 4 takes 40 CPU ms where its rows one at a time take
    4 x 5 ms: every second full batch runs the other way (a probe), and once both ways are known the
    scheduler runs full batches row by row, says so in its log, and every request keeps its own outputs."""
    import time
    ran: list[int] = []

    def run(f: Feeds) -> Outputs:
        ran.append(f["x"].shape[0])
        end = time.thread_time() + (0.040 if f["x"].shape[0] == 4 else 0.005)
        while time.thread_time() < end:  # CPU the batch's thread spends: what the judge weighs
            pass
        return {"y": f["x"] * 10}

    judge = RowsJudge(4, apart=False, window=2, neighbours=0, phase=1, period=2)  # one instance: alternate
    s = Scheduler(run, BatchPolicy(4, 0.0, (1, 2, 4)), max_queue=100, rows_judge=judge,
                  inline_max_s=0.0, inline_alone_max_s=0.0)
    s.start()
    with caplog.at_level("INFO", logger="trtop.serve.scheduler"):
        for i in range(6):  # one request of 4 rows at a time (as a native front-end's group)
            x = np.arange(8, dtype=np.float32).reshape(4, 2) + i
            np.testing.assert_array_equal((await s.submit({"x": x}, 4, signature_of({"x": x}), 5.0))["y"], x * 10)
    assert judge.apart and judge.changes == 1
    # merged, probe apart, merged, probe apart (now both known: apart by 2 x, a clear win: no probes for a while)
    assert ran == [4, 1, 1, 1, 1, 4, 1, 1, 1, 1] + [1] * 8
    assert any("served batches took 40" in r.getMessage() and "rows apart now" in r.getMessage()
               for r in caplog.records)
    await s.close()


async def test_the_rows_judge_weighs_cpu_not_waiting() -> None:
    """A merged batch that spends 10 CPU ms and waits 30 ms more (for the GIL or a core, while the event loop
    runs) costs less than four rows of 5 CPU ms each: rows that started apart go merged."""
    import time

    def run(f: Feeds) -> Outputs:
        end = time.thread_time() + (0.010 if f["x"].shape[0] == 4 else 0.005)
        while time.thread_time() < end:
            pass
        if f["x"].shape[0] == 4:
            time.sleep(0.030)
        return {"y": f["x"] * 10}

    judge = RowsJudge(4, apart=True, window=2, neighbours=0, phase=1, period=2)
    s = Scheduler(run, BatchPolicy(4, 0.0, (1, 2, 4)), max_queue=100, rows_judge=judge,
                  inline_max_s=0.0, inline_alone_max_s=0.0)
    s.start()
    x = np.ones((4, 2), np.float32)
    for _ in range(5):
        await s.submit({"x": x}, 4, signature_of({"x": x}), 5.0)
    assert not judge.apart and judge.changes == 1
    await s.close()


async def test_only_a_run_the_scheduler_started_alone_takes_the_lone_run(backend: FakeBackend) -> None:
    """The runtime's lone-run path (CPU: a session over every core) serves a request that started with
    nothing else queued or running, never a batch taken under load, even when the other instance is free."""
    lone: list[int] = []

    def run_alone(f: Feeds) -> Outputs:
        lone.append(f["x"].shape[0])
        return backend(f)

    s = Scheduler(backend, BatchPolicy(8, 0.0), max_queue=100, instances=2, run_alone=run_alone,
                  inline_max_s=0.0, inline_alone_max_s=0.0)  # every run on a compute thread
    s.start()
    assert (await submit(s, 1))["y"][0, 0] == 10
    assert lone == [1] and backend.batches == [1]
    backend.gate.clear()
    first = asyncio.ensure_future(submit(s, 2))  # alone again, held on its instance
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(submit(s, 3))  # the other instance is free, but a run is in progress
    await asyncio.sleep(0.02)
    backend.gate.set()
    await asyncio.gather(first, second)
    assert lone == [1, 1] and backend.batches == [1, 1, 1]  # the second went through the plain run
    await s.close()


async def test_the_observer_hears_of_waits_and_batches_after_their_requests_have_outputs(backend: FakeBackend) -> None:
    """Metrics are no part of a request's latency: the observer is told of the queue waits and the batch once the
    batch's futures are resolved (a turn later), for a batch that ran inline and one that ran on a thread,
    and of the waits of a request that failed."""
    futures: list[asyncio.Future[Outputs]] = []
    heard: list[tuple[str, bool]] = []

    class Late(Observer):
        def dequeued(self, waited_s: float) -> None:
            heard.append(("dequeued", all(f.done() for f in futures)))
            super().dequeued(waited_s)

        def batch_done(self, rows: int, compute_s: float) -> None:
            heard.append(("batch", all(f.done() for f in futures)))
            super().batch_done(rows, compute_s)

    obs = Late()
    s = Scheduler(backend, BatchPolicy(8, 0.0), max_queue=100, observer=obs, inline_alone_max_s=1.0)
    s.start()
    for value in (1.0, 2.0, 3.0, -1.0):  # the first on a thread (its run time unknown), then inline; a poison
        f, r, sig = feeds(value)
        futures.append(s.enqueue(f, r, sig, 5.0))
        await asyncio.wait([futures[-1]])
    for _ in range(3):
        await asyncio.sleep(0)
    assert heard == [("dequeued", True), ("batch", True)] * 3 + [("dequeued", True)]
    assert obs.rows == [1, 1, 1] and len(obs.waits) == 4
    assert isinstance(futures[-1].exception(), InferenceFailed)
    await s.close()
