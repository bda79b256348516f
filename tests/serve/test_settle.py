"""The model's load waits for the Python front-ends to start on CPU (``Supervisor._settle``): the load times the
model's ways of running, and a front-end's imports taking a core then chose the slower way for the server's life."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from trtop.serve import supervisor
from trtop.serve.supervisor import Supervisor


def holder(gpu: bool, python_heard: bool = False, python_exited: bool = False) -> SimpleNamespace:
    """What ``_settle`` reads of a supervisor: front-end 0 native (it never says hello), 1 Python."""
    return SimpleNamespace(
        gpu=gpu,
        dispatchers={0: SimpleNamespace(heard=False), 1: SimpleNamespace(heard=python_heard)},
        processes={0: SimpleNamespace(returncode=None), 1: SimpleNamespace(returncode=1 if python_exited else None)},
        _is_native=lambda index: index == 0,
    )


async def test_on_cpu_the_load_waits_until_every_python_front_end_has_spoken() -> None:
    s = holder(gpu=False)
    settle = asyncio.ensure_future(Supervisor._settle(s))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert not settle.done()  # the Python front-end is still starting
    s.dispatchers[1].heard = True
    await asyncio.wait_for(settle, 1.0)


async def test_nothing_to_wait_for_on_a_gpu_or_once_the_front_end_is_gone_or_past_the_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    await asyncio.wait_for(Supervisor._settle(holder(gpu=True)), 0.1)  # type: ignore[arg-type]
    await asyncio.wait_for(Supervisor._settle(holder(gpu=False, python_exited=True)), 0.1)  # type: ignore[arg-type]
    await asyncio.wait_for(Supervisor._settle(holder(gpu=False, python_heard=True)), 0.1)  # type: ignore[arg-type]
    monkeypatch.setattr(supervisor, "SETTLE_S", 0.05)
    await asyncio.wait_for(Supervisor._settle(holder(gpu=False)), 1.0)  # type: ignore[arg-type]
