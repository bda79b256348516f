"""The autoscaler against serving pods that answer badly on purpose: every byte a pod's
/metrics sends is a tenant's, so reads are bounded in bytes and time, and the decision
stays within [minReplicas, maxReplicas] whatever the values."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from trtop.autoscale import Observation, PodSample, ScalingHistory, ScalingPolicy, decide
from trtop.autoscale.load import MAX_METRICS_BYTES, DirectScraper, PodEndpoint
from trtop.names import METRIC_INFLIGHT, METRIC_REQUESTS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Starts a real HTTP server with these routes; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for r in runners:
        await r.cleanup()


def text(body: str) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=body)
    return handler


async def test_a_redirect_is_not_followed(serve: Callable[[dict[str, Handler]], Awaitable[str]]) -> None:
    """A pod must not point the operator at another address (another pod's /metrics, the API
    server, a cloud metadata service) and have that answer taken as its own load."""
    elsewhere = await serve({"/metrics": text(f"{METRIC_INFLIGHT} 100\n")})

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(elsewhere + "/metrics")

    base = await serve({"/metrics": redirect})
    reading = await DirectScraper(timeout_seconds=2.0).read([PodEndpoint("p", "ns", True, base + "/metrics")],
                                                            "inflight")
    assert reading.samples[0].value is None
    assert "HTTP 302" in reading.errors[0]


async def test_a_pathological_body_neither_takes_long_nor_blocks_the_event_loop(
        serve: Callable[[dict[str, Handler]], Awaitable[str]]) -> None:
    """prometheus_client's parser is quadratic in a line's labels: one ~0.6 MB line took
    seconds of CPU on the event loop, past every timeout. Long lines are refused, and the rest
    of the (bounded) body is parsed off the event loop."""
    one_line = METRIC_INFLIGHT + "{" + ",".join(f'a{i}="b"' for i in range(60_000)) + "} 1\n"
    bad_value = f"{METRIC_INFLIGHT} 1" + "2" * 4000 + "x\n"  # short enough a line, not a number
    row = METRIC_INFLIGHT + "{" + ",".join(f'a{i}="b"' for i in range(350)) + "} 0\n"  # < 4096 characters
    many_rows = row * ((MAX_METRICS_BYTES - 100) // len(row))
    assert len(one_line) < MAX_METRICS_BYTES and len(many_rows) < MAX_METRICS_BYTES
    base = await serve({"/one": text(one_line), "/bad": text(bad_value), "/many": text(many_rows)})
    pods = [PodEndpoint(n, "ns", True, f"{base}/{n}") for n in ("one", "bad", "many")]
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    start = time.monotonic()
    try:
        reading = await DirectScraper(timeout_seconds=2.0).read(pods, "inflight")
    finally:
        done = True
        await tick
    assert time.monotonic() - start < 5.0  # (the old parse of the long line alone took 3.7 s, on the loop)
    assert [s.value for s in reading.samples] == [None, None, 0.0]
    assert "longer than" in reading.errors[0] and "not Prometheus text format" in reading.errors[1]
    assert all(len(e) < 1000 for e in reading.errors)  # not the pod's line echoed back in full
    assert max(gaps) < 0.5, f"the event loop stood still for {max(gaps):.2f} s"  # (1.2 s parsing on the loop)


async def test_a_new_address_under_the_same_pod_name_starts_a_new_rate(
        serve: Callable[[dict[str, Handler]], Awaitable[str]]) -> None:
    """A pod's IP can change (its sandbox recreated) or be reused: counters read from another
    address are another process's, and their difference is no rate."""
    def counters(total: int) -> Handler:
        return text(f'{METRIC_INFLIGHT} 0\n{METRIC_REQUESTS}{{model="m",outcome="ok"}} {total}\n')

    before = await serve({"/metrics": counters(10)})
    after = await serve({"/metrics": counters(5_000_000)})
    now = [1000.0]
    scraper = DirectScraper(clock=lambda: now[0])
    await scraper.read([PodEndpoint("p", "ns", True, before + "/metrics")], "rps")
    now[0] += 15
    reading = await scraper.read([PodEndpoint("p", "ns", True, after + "/metrics")], "rps")
    assert reading.samples[0].value is None  # a first scrape of this address: no rate yet
    now[0] += 15
    reading = await scraper.read([PodEndpoint("p", "ns", True, after + "/metrics")], "rps")
    assert reading.samples[0].value == 0.0


@pytest.mark.parametrize("target", [1e-300, 5e-324])
def test_a_tiny_target_and_a_huge_reading_stay_within_max_replicas(target: float) -> None:
    """ceil(1e9 / 1e-300) overflowed (OverflowError): that object's autoscaling died every round."""
    policy = ScalingPolicy(min_replicas=1, max_replicas=5, target=target)
    for cur in (0, 2):
        pods = (PodSample("a", True, 1e9),) if cur else ()
        obs = Observation(100.0, cur, pods, pending_load=1e9)
        d, _ = decide(ScalingPolicy(min_replicas=0, max_replicas=5, target=target) if cur == 0 else policy, obs,
                      ScalingHistory())
        assert 1 <= d.desired_replicas <= 5, d.reason


def test_a_reading_from_the_future_is_not_fresh() -> None:
    """A sample time far ahead of the observation (a skewed or lying clock) would otherwise
    stay fresh forever."""
    obs = Observation(100.0, 2, (PodSample("a", True, 100.0, 100.0 + 1e9),))
    d, _ = decide(ScalingPolicy(min_replicas=1, max_replicas=5), obs, ScalingHistory())
    assert d.held and d.desired_replicas == 2, d.reason
    # A few seconds of skew between Prometheus' clock and ours is still a fresh reading.
    obs = Observation(100.0, 2, (PodSample("a", True, 100.0, 105.0),))
    assert decide(ScalingPolicy(min_replicas=1, max_replicas=5), obs, ScalingHistory())[0].desired_replicas == 5


def test_history_stays_bounded_under_a_long_window_and_decides_the_same() -> None:
    """scaleDownWindowSeconds has no upper bound in the spec: one recommendation per round
    was kept for the whole window (a year's window: two million of them, each scanned every
    round). Only recommendations that can still be a window's highest or lowest are kept."""
    policy = ScalingPolicy(min_replicas=1, max_replicas=10, target=1.0, scale_down_window_seconds=1e9,
                           scale_up_window_seconds=1e9)
    history = ScalingHistory()
    cur = 3
    for i in range(2000):
        load = float((i * 7919) % 13)  # 0..12 in a scrambled order
        d, history = decide(policy, Observation(15.0 * i, cur, (PodSample("a", True, load),)), history)
        cur = d.desired_replicas
        assert policy.min_replicas <= cur <= policy.max_replicas
    assert len(history.recommendations) <= 2 * (policy.max_replicas + 1) + 1
    # The windows' extremes are those of every recommendation ever made.
    assert min(history.recommended_since(-1.0)) == 1 and max(history.recommended_since(-1.0)) == 10


async def test_values_a_pod_may_send_never_leave_min_max(
        serve: Callable[[dict[str, Handler]], Awaitable[str]]) -> None:
    bodies = {"/nan": "NaN", "/inf": "+Inf", "/ninf": "-Inf", "/neg": "-5", "/huge": "1e308", "/tiny": "5e-324"}
    base = await serve({p: text(f"{METRIC_INFLIGHT} {v}\n{METRIC_INFLIGHT}{{model=\"dup\"}} {v}\n")
                        for p, v in bodies.items()})
    pods = [PodEndpoint(p.strip("/"), "ns", True, base + p) for p in bodies]
    reading = await DirectScraper(timeout_seconds=2.0).read(pods, "inflight")
    values = {s.name: s.value for s in reading.samples}
    assert values == {"nan": None, "inf": 1e9, "ninf": 0.0, "neg": 0.0, "huge": 1e9, "tiny": 1e-323}
    for cur in (1, 3, 8):
        d, _ = decide(ScalingPolicy(min_replicas=1, max_replicas=8), Observation(time.time(), cur, reading.samples),
                      ScalingHistory())
        assert 1 <= d.desired_replicas <= 8, d.reason
