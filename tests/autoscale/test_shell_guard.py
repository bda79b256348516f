"""The autoscaler's loop: one object that raises never stops the others' autoscaling (issue 11:
``targets: ["8.9", "8.9/NVIDIA-L4"]`` raised inside the loop, which had no per-object guard)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from trtop import names
from trtop.api.spec import ScalingMetric
from trtop.autoscale.load import LoadReading, PodEndpoint
from trtop.config import Settings
from trtop.handlers import autoscaling
from trtop.k8s.cache import ClusterCache

BUILTIN = {"model": {"uri": "s3://m/a"}, "scaling": {"mode": "builtin", "minReplicas": 1, "maxReplicas": 4}}


def md(name: str, spec: Any, uid: str = "") -> dict[str, Any]:
    meta = {"name": name, "namespace": "ml", "generation": 1, "resourceVersion": "1"}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": meta, "spec": spec}


def deployment(name: str, uid: str) -> dict[str, Any]:
    """A serving unit (one architecture's Deployment) of the object with ``uid``."""
    return {"metadata": {"name": f"{name}-sm89-nvidia-l4", "namespace": "ml", "resourceVersion": "1",
                         "labels": {names.LABEL_TARGET: "sm89-nvidia-l4"},
                         "ownerReferences": [{"uid": uid, "controller": True}]},
            "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}


class Recording:
    """A load source that remembers which objects' pods it was asked about (and holds: no change)."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def read(self, pods: Sequence[PodEndpoint], metric: ScalingMetric) -> LoadReading:
        self.asked.append(len(pods))
        return LoadReading(samples=())


def test_an_object_that_raises_is_skipped_and_the_others_are_autoscaled(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ClusterCache()
    # Sorted before the good one, and broken where the loop reads it: no uid (KeyError), and
    # a spec the issue named (a duplicate target).
    cache.on_model_deployment("ADDED", md("a-broken", BUILTIN))
    cache.on_model_deployment("ADDED", md("a-dup", {**BUILTIN, "engine": {"targets": ["8.9", "8.9/NVIDIA-L4"]}},
                                          uid="u-dup"))
    cache.on_model_deployment("ADDED", md("b-good", BUILTIN, uid="u-good"))
    cache.on_deployment("ADDED", deployment("a-broken", "u-x"))
    cache.on_deployment("ADDED", deployment("b-good", "u-good"))
    monkeypatch.setattr(autoscaling, "CACHE", cache)
    source = Recording()
    asyncio.run(autoscaling.autoscale_once(Settings(), source))
    assert source.asked == [0]  # b-good was read (it has no pods yet); the others were skipped


def serving_pod(md_name: str, pod_name: str) -> dict[str, Any]:
    return {"metadata": {"name": pod_name, "namespace": "ml", "ownerReferences": [
                             {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{md_name}-rs", "uid": "rs",
                              "controller": True}],
                         "labels": {names.LABEL_MODEL_DEPLOYMENT: md_name,
                                    names.LABEL_COMPONENT: names.COMPONENT_INFERENCE}},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}


async def test_pods_that_never_answer_do_not_hold_up_other_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects were read one after another: each whose pods hang cost every later object a
    full timeout per round (a tenant with many such objects delayed everyone's scaling)."""
    from aiohttp import web

    from trtop.autoscale.load import DirectScraper

    released = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await asyncio.wait_for(released.wait(), timeout=30)
        return web.Response(text="")

    async def fast(_: web.Request) -> web.Response:
        return web.Response(text=f"{names.METRIC_INFLIGHT} 1\n")

    ports = {}
    runners = []
    for path, handler in (("slow", hang), ("fast", fast)):
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        ports[path] = runner.addresses[0][1]
    cache = ClusterCache()
    mds = [f"a-slow-{i}" for i in range(4)] + ["b-fast"]
    for name in mds:
        port = ports["fast" if name == "b-fast" else "slow"]
        cache.on_model_deployment("ADDED", md(name, {**BUILTIN, "serving": {"port": port}}, uid=f"u-{name}"))
        cache.on_deployment("ADDED", deployment(name, f"u-{name}"))
        cache.on_pod("ADDED", serving_pod(name, f"{name}-pod"))
    monkeypatch.setattr(autoscaling, "CACHE", cache)
    applied: dict[str, float] = {}
    start = time.monotonic()
    monkeypatch.setattr(autoscaling, "_apply",
                        lambda body, *_: applied.setdefault(body["metadata"]["name"], time.monotonic() - start))
    try:
        await autoscaling.autoscale_once(Settings(), DirectScraper(timeout_seconds=1.0))
    finally:
        released.set()
        for r in runners:
            await r.cleanup()
    assert sorted(applied) == sorted(mds)
    assert applied["b-fast"] < 0.8, applied  # not after the slow objects' timeouts
    assert max(applied.values()) < 3.0, applied  # the slow ones time out together (one after another: 4 s)
