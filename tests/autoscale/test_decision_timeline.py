"""decide() over simulated time: steps of load, flapping load, pods that take a while to be ready.

The simulator spreads a total in-flight load evenly over the ready pods, creates pods when the
decision asks for more (ready after ``ready_delay`` seconds) and removes the newest first.
"""
from __future__ import annotations

from collections.abc import Callable

from trtop.autoscale import Observation, PodSample, ScalingHistory, ScalingPolicy, decide

PERIOD = 15


def simulate(policy: ScalingPolicy, load_at: Callable[[int], float], seconds: int, *, start: int = 1,
             ready_delay: int = 20) -> list[tuple[int, float, int]]:
    """(time, total load, replicas after the decision) per sync period."""
    created = [-ready_delay] * start  # start with ready pods
    history = ScalingHistory()
    timeline = []
    for t in range(0, seconds, PERIOD):
        load = load_at(t)
        ready = [c for c in created if t - c >= ready_delay]
        per_pod = load / len(ready) if ready else 0.0
        samples = tuple(PodSample(f"pod-{i}", t - c >= ready_delay, per_pod if t - c >= ready_delay else None)
                        for i, c in enumerate(created))
        d, history = decide(policy, Observation(float(t), len(created), samples), history)
        while len(created) < d.desired_replicas:
            created.append(t)
        del created[d.desired_replicas:]
        timeline.append((t, load, d.desired_replicas))
    return timeline


def direction_changes(timeline: list[tuple[int, float, int]]) -> int:
    moves = [b[2] - a[2] for a, b in zip(timeline, timeline[1:]) if b[2] != a[2]]
    return sum(1 for a, b in zip(moves, moves[1:]) if (a > 0) != (b > 0))


def flapping(t: int) -> float:
    return 14.0 if (t // PERIOD) % 2 else 18.0  # recommendations alternate 4 and 5 at target 4


def test_flapping_load_does_not_oscillate_with_the_default_window() -> None:
    timeline = simulate(ScalingPolicy(target=4.0, max_replicas=10), flapping, 900, start=4)
    replicas = [r for _, _, r in timeline]
    assert direction_changes(timeline) == 0, timeline
    assert replicas[-1] == 5 and min(replicas[2:]) == 5, timeline


def test_flapping_load_oscillates_without_a_window_so_the_window_is_what_holds_it() -> None:
    timeline = simulate(ScalingPolicy(target=4.0, max_replicas=10, scale_down_window_seconds=0.0),
                        flapping, 900, start=4)
    assert direction_changes(timeline) >= 5, timeline


def test_noise_within_tolerance_never_moves_even_without_a_window() -> None:
    timeline = simulate(ScalingPolicy(target=4.0, max_replicas=10, scale_down_window_seconds=0.0),
                        lambda t: 15.5 if (t // PERIOD) % 2 else 16.5, 600, start=4)
    assert {r for _, _, r in timeline} == {4}


def test_step_up_hold_then_scale_down_after_the_window() -> None:
    def load(t: int) -> float:
        return 40.0 if 60 <= t < 600 else 2.0

    policy = ScalingPolicy(target=4.0, min_replicas=1, max_replicas=10, scale_down_window_seconds=120.0)
    timeline = simulate(policy, load, 900, start=1)
    by_time = {t: r for t, _, r in timeline}
    # Up within two sync periods of the step (rate limit: 1 -> 5 -> 10).
    assert by_time[60] == 5 and by_time[75] == 10, timeline
    # Steady under constant load, new pods' readiness delay notwithstanding.
    assert {by_time[t] for t in range(75, 600, PERIOD)} == {10}, timeline
    # Load drops at 600: still 10 until 120 s after the last high reading (585), then 1.
    assert {by_time[t] for t in range(600, 705, PERIOD)} == {10}, timeline
    assert by_time[705] == 1, timeline
    assert direction_changes(timeline) == 1
