"""The batching policy and merge/split, as pure functions."""
from __future__ import annotations

import numpy as np
import pytest

from trtop.serve.batching import (
    BatchPolicy, Decision, Pending, RowsJudge, merge, next_batch, rows_apart, signature_of, split,
)

A, B = ("a",), ("b",)
POLICY = BatchPolicy(max_batch=8, max_delay=0.005)


def p(rows: int, at: float, sig: tuple[str, ...] = A) -> Pending:
    return Pending(rows, sig, at)


class TestNextBatch:
    def test_empty_queue_waits_for_arrivals(self) -> None:
        assert next_batch([], POLICY, now=1.0) == Decision((), None)

    def test_waits_for_company_until_the_oldest_is_due(self) -> None:
        d = next_batch([p(1, 1.000), p(1, 1.001)], POLICY, now=1.002)
        assert d.take == () and d.wake_at == pytest.approx(1.005)

    def test_runs_when_the_oldest_has_waited_max_delay(self) -> None:
        assert next_batch([p(1, 1.000), p(1, 1.001)], POLICY, now=1.005).take == (0, 1)

    def test_runs_at_once_when_full(self) -> None:
        assert next_batch([p(4, 1.0), p(4, 1.0)], POLICY, now=1.0).take == (0, 1)

    def test_counts_rows_not_requests(self) -> None:
        assert next_batch([p(3, 1.0), p(3, 1.0)], POLICY, now=1.0).take == ()  # 6 rows of 8: wait
        # 9 rows queued: more than a batch holds, so it leaves now with the 6 that fit
        assert next_batch([p(3, 1.0), p(3, 1.0), p(3, 1.0)], POLICY, now=1.0).take == (0, 1)

    def test_a_smaller_request_further_back_fills_the_gap(self) -> None:
        assert next_batch([p(5, 1.0), p(4, 1.0), p(3, 1.0)], POLICY, now=1.0).take == (0, 2)

    def test_only_requests_with_the_oldest_ones_signature_merge(self) -> None:
        q = [p(2, 1.0, A), p(2, 1.0, B), p(2, 1.0, A), p(6, 1.0, B)]
        assert next_batch(q, POLICY, now=1.01).take == (0, 2)
        assert next_batch(q[1:2] + q[3:], POLICY, now=1.0).take == (0, 1)  # B: 2 + 6 = full

    def test_flush_runs_without_waiting(self) -> None:
        assert next_batch([p(1, 1.0)], POLICY, now=1.0, flush=True).take == (0,)

    def test_zero_delay_never_waits(self) -> None:
        assert next_batch([p(1, 1.0)], BatchPolicy(8, 0.0), now=1.0).take == (0,)

    def test_the_head_always_goes_even_if_alone(self) -> None:
        assert next_batch([p(8, 1.0), p(1, 1.0)], POLICY, now=1.0).take == (0,)

    @pytest.mark.parametrize("max_batch,delay", [(0, 0.0), (4, -1.0)])
    def test_policy_rejects_nonsense(self, max_batch: int, delay: float) -> None:
        with pytest.raises(ValueError):
            BatchPolicy(max_batch, delay)


class TestMergeSplit:
    def test_round_trip_keeps_each_requests_rows(self) -> None:
        reqs = [{"x": np.full((n, 3), i, np.float32)} for i, n in enumerate((1, 3, 2))]
        batch = merge(reqs)
        assert batch["x"].shape == (6, 3)
        parts = split({"y": batch["x"] * 10}, [1, 3, 2])
        for i, (part, n) in enumerate(zip(parts, (1, 3, 2), strict=True)):
            np.testing.assert_array_equal(part["y"], np.full((n, 3), i * 10, np.float32))

    def test_single_request_is_not_copied(self) -> None:
        x = np.zeros((2, 3), np.float32)
        assert merge([{"x": x}])["x"] is x

    def test_a_single_request_at_an_odd_address_is_copied_aligned(self) -> None:
        body = np.arange(2 * 3 * 4 + 2, dtype=np.uint8).tobytes()
        x = np.frombuffer(body, np.float32, count=6, offset=2).reshape(2, 3)  # a tensor after a 2-byte header
        assert not x.flags.aligned
        into = {"x": np.empty((2, 3), np.float32)}
        got = merge([{"x": x}], 2, into)["x"]
        assert got is into["x"] and got.flags.aligned
        np.testing.assert_array_equal(got, x)
        alone = merge([{"x": x}])["x"]
        assert alone.flags.aligned and alone is not x
        np.testing.assert_array_equal(alone, x)

    def test_split_refuses_outputs_without_the_batch_dimension(self) -> None:
        with pytest.raises(ValueError, match="batch dimension first"):
            split({"y": np.zeros((5,), np.float32)}, [2, 2])

    def test_signature_ignores_the_batch_dimension_only(self) -> None:
        a = signature_of({"x": np.zeros((1, 7), np.int64)})
        assert a == signature_of({"x": np.zeros((5, 7), np.int64)})
        assert a != signature_of({"x": np.zeros((1, 8), np.int64)})
        assert a != signature_of({"x": np.zeros((1, 7), np.int32)})


class TestSharingBetweenInstances:
    def test_queued_rows_are_shared_among_idle_instances(self) -> None:
        q = [p(1, 1.0) for _ in range(8)]
        assert next_batch(q, POLICY, now=1.0, idle=2).take == (0, 1, 2, 3)  # full queue, two batches of 4
        assert next_batch(q[:3], POLICY, now=1.01, idle=2).take == (0, 1)  # due: ceil(3 / 2)
        assert next_batch(q[:3], POLICY, now=1.01, idle=1).take == (0, 1, 2)

    def test_sharing_never_splits_a_request_or_skips_the_head(self) -> None:
        assert next_batch([p(6, 1.0), p(1, 1.0)], POLICY, now=1.01, idle=4).take == (0,)


class TestIdleDispatch:
    def test_a_request_that_finds_an_instance_free_runs_at_once(self) -> None:
        idle_arrival = Pending(1, A, 1.0, arrived_busy=False)
        assert next_batch([idle_arrival], POLICY, now=1.0).take == (0,)

    def test_requests_that_queued_while_busy_may_wait_for_a_fuller_batch(self) -> None:
        busy_arrival = Pending(1, A, 1.0, arrived_busy=True)
        assert next_batch([busy_arrival], POLICY, now=1.001) == Decision((), 1.005)

    def test_without_a_delay_a_freed_instance_takes_what_queued_at_once(self) -> None:
        q = [Pending(1, A, 1.0 + i / 1000) for i in range(5)]
        assert next_batch(q, BatchPolicy(8), now=1.005).take == (0, 1, 2, 3, 4)  # no buckets: every size runs

    def test_no_idle_instance_means_no_batch(self) -> None:
        assert next_batch([p(1, 1.0)], POLICY, now=2.0, idle=0) == Decision()


BUCKETED = BatchPolicy(max_batch=32, buckets=(1, 2, 4, 8, 16, 32))


class TestBuckets:
    def test_single_rows_round_down_to_a_bucket_instead_of_padding(self) -> None:
        q = [p(1, 1.0) for _ in range(19)]
        d = next_batch(q, BUCKETED, now=1.0)
        assert len(d.take) == 16 and d.size == 16

    def test_rows_that_cannot_land_on_a_bucket_are_padded_up(self) -> None:
        d = next_batch([p(3, 1.0)], BUCKETED, now=1.0)
        assert d.take == (0,) and d.size == 4

    def test_a_prefix_that_lands_on_a_bucket_is_preferred(self) -> None:
        d = next_batch([p(2, 1.0), p(2, 1.0), p(3, 1.0)], BUCKETED, now=1.0)  # 7 rows: 2+2 = 4 exactly
        assert d.take == (0, 1) and d.size == 4

    def test_bucket_for_and_below(self) -> None:
        assert [BUCKETED.bucket_for(n) for n in (1, 3, 5, 17, 32)] == [1, 4, 8, 32, 32]
        assert [BUCKETED.bucket_below(n) for n in (1, 3, 5, 17, 32)] == [1, 2, 4, 16, 32]

    @pytest.mark.parametrize("buckets", [(0, 4, 32), (1, 4, 2, 32), (1, 2, 16)])
    def test_policy_rejects_buckets_that_do_not_cover_the_range(self, buckets: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match="buckets"):
            BatchPolicy(32, buckets=buckets)

    def test_padding_repeats_the_last_real_row_and_split_drops_it(self) -> None:
        reqs = [{"x": np.full((1, 2), 1.0, np.float32)}, {"x": np.full((2, 2), 2.0, np.float32)}]
        batch = merge(reqs, size=4)["x"]
        np.testing.assert_array_equal(batch, [[1, 1], [2, 2], [2, 2], [2, 2]])
        parts = split({"y": batch * 10}, [1, 2], size=4)
        assert [part["y"].shape for part in parts] == [(1, 2), (2, 2)]
        with pytest.raises(ValueError, match="expected 4 rows"):
            split({"y": batch[:3]}, [1, 2], size=4)

    def test_one_request_padded_is_copied_not_passed_through(self) -> None:
        x = np.zeros((3, 2), np.float32)
        out = merge([{"x": x}], size=4)["x"]
        assert out.shape == (4, 2) and out is not x


class TestBatchBuffers:
    def test_a_batch_reuses_the_buffers_of_an_earlier_one_of_its_shape(self) -> None:
        from trtop.serve.batching import BatchBuffers

        pool = BatchBuffers(keep=1)
        reqs = [{"x": np.full((1, 2), 1.0, np.float32)}, {"x": np.full((2, 2), 2.0, np.float32)}]
        first = pool.take(reqs, 4)
        assert first is not None and first["x"].shape == (4, 2)
        merged = merge(reqs, 4, first)
        assert merged["x"] is first["x"]
        np.testing.assert_array_equal(merged["x"], [[1, 1], [2, 2], [2, 2], [2, 2]])
        pool.give(reqs, 4, first)
        assert pool.take(reqs, 4) is first  # the same arrays, no new allocation
        assert pool.take(reqs, 4) is not first  # taken: a second batch gets its own

    def test_a_request_that_fills_its_batch_needs_no_buffer(self) -> None:
        from trtop.serve.batching import BatchBuffers

        assert BatchBuffers().take([{"x": np.zeros((4, 2), np.float32)}], 4) is None


class TestMergeMax:
    """Where batching stops paying, merged batches stop growing; one request still runs whole."""

    def test_paying_batch_keeps_every_size_while_throughput_grows(self) -> None:
        from trtop.serve.batching import paying_batch
        assert paying_batch({1: 900.0, 2: 1600.0, 4: 2700.0, 8: 3900.0}) == 8  # a GPU

    def test_paying_batch_stops_where_rows_per_second_fall(self) -> None:
        from trtop.serve.batching import paying_batch
        assert paying_batch({1: 168.0, 2: 150.0, 4: 120.0, 8: 80.0, 16: 40.0}) == 1  # MobileNetV2, 2 cores
        assert paying_batch({1: 100.0, 2: 160.0, 4: 150.0, 8: 90.0}) == 4  # 4 is within 10% of 2's best
        assert paying_batch({1: 100.0, 2: 160.0, 4: 150.0, 8: 90.0}, keep=0.95) == 2

    def test_paying_batch_goes_below_the_floor_only_when_the_floor_clearly_loses(self) -> None:
        from trtop.serve.batching import paying_batch
        # Within the noise (4 at 0.85 of the best): the floor, where the server's per-batch cost is shared.
        assert paying_batch({1: 200.0, 2: 185.0, 4: 170.0, 8: 120.0}) == 2
        assert paying_batch({1: 200.0, 2: 185.0, 4: 170.0, 8: 120.0}, floor=4) == 4
        # Clearly worse (4 at 0.6 of the best): the measurement decides.
        assert paying_batch({1: 168.0, 2: 150.0, 4: 100.0, 8: 80.0}, floor=4) == 1
        # Not measured that far (a small engine): nothing to lean on.
        assert paying_batch({1: 200.0, 2: 150.0}, floor=4) == 1

    def test_policy_checks_merge_max(self) -> None:
        with pytest.raises(ValueError, match="merge max"):
            BatchPolicy(max_batch=4, merge_max=8)
        assert BatchPolicy(max_batch=4).gather == 4 and BatchPolicy(max_batch=4, merge_max=2).gather == 2

    def test_queued_requests_merge_only_up_to_merge_max(self) -> None:
        policy = BatchPolicy(max_batch=8, buckets=(1, 2, 4, 8), merge_max=2)
        d = next_batch([p(1, 1.0) for _ in range(6)], policy, now=1.0)
        assert d.take == (0, 1) and d.size == 2

    def test_a_request_larger_than_merge_max_runs_whole(self) -> None:
        policy = BatchPolicy(max_batch=8, buckets=(1, 2, 4, 8), merge_max=1)
        d = next_batch([p(3, 1.0), p(1, 1.0)], policy, now=1.0)
        assert d.take == (0,) and d.size == 4  # padded up to its bucket, not merged with the next


class TestRowsApart:
    def test_rows_go_apart_unless_merging_is_clearly_faster_best_against_best(self) -> None:
        assert rows_apart([265.0, 290.0, 270.0], [319.0, 250.0, 324.0])  # a slow spell in one turn changes nothing
        assert rows_apart([259.0, 258.0, 248.0], [235.0, 264.0, 238.0])  # a tie: apart
        assert rows_apart([300.0], [292.0])  # merged 1.027 x: within the measurement's noise
        assert not rows_apart([45739.0, 46072.0], [33533.0, 35659.0])  # the light model batches well

    def test_nothing_measured_merges(self) -> None:
        assert not rows_apart([], [300.0]) and not rows_apart([300.0], [])


class TestRowsJudge:
    """Served batches judge the way again: start-up measured the engine alone, in short turns."""

    @staticmethod
    def serve(judge: RowsJudge, seconds: dict[bool, float], batches: int, rows: int = 4) -> list[bool]:
        """Run ``batches`` batches of ``rows`` rows one after another, each taking ``seconds[way]``; their ways."""
        ways = []
        for _ in range(batches):
            way, ticket = judge.way(rows)
            ways.append(way)
            judge.record(ticket, seconds[way])
        return ways

    def test_the_last_batches_of_every_period_run_the_other_way_and_other_sizes_the_way_chosen(self) -> None:
        judge = RowsJudge(4, apart=True, window=100, phase=3, period=8)
        assert [judge.way(4)[0] for _ in range(16)] == [True] * 5 + [False] * 3 + [True] * 5 + [False] * 3
        assert all(judge.way(rows) == (True, None) for rows in (2, 3, 5, 8) for _ in range(4))  # never counted
        assert judge.way(4) == (True, (16, True, 0))
        # The defaults: 8 of 128 with two instances, phases long enough for several clean batches with more.
        two, eight = RowsJudge(4, True), RowsJudge(4, True, neighbours=7)
        assert sum(not two.way(4)[0] for _ in range(128)) == 8
        assert sum(not eight.way(4)[0] for _ in range(448 * 2)) == 28 * 2

    def test_served_batches_overturn_a_guess_made_under_load(self) -> None:
        """Start-up chose merged (another process slowed its turns); served, a merged batch of 4 takes
        30 ms and its rows apart 25 ms (MobileNetV2's proportions on two cores: 0.70 against 0.82 x)."""
        judge = RowsJudge(4, apart=False, window=4, phase=6, period=12, clear=1.5)  # a close call: probes go on
        ways = self.serve(judge, {False: 0.030, True: 0.025}, 24)
        assert judge.apart and judge.changes == 1 and judge.last == (0.030, 0.025)
        # A probe phase gives 4 clean batches (its first and last ran beside a merged one): the window is
        # full at the phase's fifth batch; its sixth is a probe of the way that lost.
        assert ways == [False] * 6 + [True] * 5 + [False] + [True] * 6 + [False] * 6
        assert self.serve(judge, {False: 0.030, True: 0.025}, 12) == [True] * 6 + [False] * 6  # probes merged now

    def test_only_batches_beside_their_own_way_are_evidence(self) -> None:
        """A batch whose neighbour ran the other way says nothing about its way: the probe phase's edges are
        dropped however fast they were."""
        judge = RowsJudge(4, apart=True, window=2, phase=4, period=8)
        tickets = [judge.way(4)[1] for _ in range(8)]  # 4 apart, then probes 4..7 merged
        for t in tickets[:4]:
            assert not judge.record(t, 0.030)
        assert not judge.record(tickets[4], 0.001)  # beside batch 3 (apart): no evidence
        assert not judge.record(tickets[7], 0.001)  # beside batch 8 (apart again)
        assert not judge.record(tickets[5], 0.020)
        assert judge.record(tickets[6], 0.020) and not judge.apart  # the clean middle: merged 1.5 x
        # Tickets of the verdict before, and the batches beside the change, teach nothing.
        old = judge.way(4)[1]
        assert old is not None and old.verdict == 1 and not judge.record(tickets[0], 0.001)

    def test_merging_that_clearly_pays_wins_back_and_a_tie_stays_apart(self) -> None:
        judge = RowsJudge(32, apart=True, window=4, phase=6, period=12)
        self.serve(judge, {False: 0.0016, True: 0.0022}, 24, rows=32)  # the light model: merged ~1.35 x
        assert not judge.apart and judge.changes == 1
        tie = RowsJudge(4, apart=True, window=4, phase=6, period=12)
        self.serve(tie, {False: 0.0300, True: 0.0305}, 120)  # merged 1.017 x: within the rule's margin
        assert tie.apart and tie.changes == 0

    def test_one_slow_batch_decides_nothing_and_a_change_needs_fresh_windows(self) -> None:
        judge = RowsJudge(4, apart=True, window=3, neighbours=0, phase=1, period=2, clear=10.0)  # alternate
        for way, seconds in ((True, 0.025), (False, 0.030), (True, 0.025), (False, 0.030), (True, 0.090),
                             (False, 0.030)):  # a slow spell (another process) in one row-by-row batch
            w, ticket = judge.way(4)
            assert w == way and not judge.record(ticket, seconds)
        assert judge.apart
        for _ in range(2):  # apart now slower on the median: merged
            judge.record(judge.way(4)[1], 0.040)
            judge.way(4)
        assert not judge.apart and judge.changes == 1
        # Both windows start again: the next batches, however they go, need three of each way first.
        for _ in range(2):
            assert not judge.record(judge.way(4)[1], 0.050) and not judge.record(judge.way(4)[1], 0.010)
        assert not judge.apart
        assert not judge.record(judge.way(4)[1], 0.0) and not judge.record(None, 1.0)  # no time, no ticket

    def test_a_clear_win_is_not_probed_for_a_while(self) -> None:
        """The light model's merged batch of 32 beats its rows apart ~1.35 x: once judged, the probes stop for
        ``quiet`` periods (the wrong way's cost paid ~1 in 100 full batches instead of 1 in 16), then resume."""
        judge = RowsJudge(32, apart=False, window=4, phase=6, period=12, quiet=3)
        ways = self.serve(judge, {False: 0.0016, True: 0.0022}, 12 + 36 + 12, rows=32)
        assert not judge.apart and judge.changes == 0
        # Judged at the probe phase's fifth batch (11 full batches in): quiet for 36, then the phases again
        # (a lone probe at a phase's end is no evidence), judged again at the next phase's fifth: quiet again.
        assert ways == [False] * 6 + [True] * 5 + [False] * 36 + [True] + [False] * 6 + [True] * 5 + [False]
        # A close call (1.1 x) keeps probing.
        close = RowsJudge(4, apart=True, window=4, phase=6, period=12, quiet=3)
        assert self.serve(close, {False: 0.033, True: 0.030}, 36).count(False) == 18

    def test_arguments_are_checked(self) -> None:
        for kwargs in ({"size": 1}, {"window": 0}, {"neighbours": 2, "phase": 4}, {"phase": 8, "period": 8}):
            with pytest.raises(ValueError):
                RowsJudge(**{"size": 4, "apart": True, **kwargs})
