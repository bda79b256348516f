"""kopf registration: the decorators only, each a line or two calling the real handler.

Imported by ``trtop operator`` (kopf.operator) and by ``kopf run -m trtop.handlers.main``.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf

from trtop import names
from trtop.config import Settings
from trtop.handlers import autoscaling, gc, resync
from trtop.handlers.modeldeployment import reconcile

SETTINGS = Settings.from_env()
RECONCILE_INTERVAL = float(os.environ.get("TRTOP_RECONCILE_INTERVAL_SECONDS", "10"))
_background: list[tuple[asyncio.Task[Any], asyncio.Event]] = []


@kopf.on.startup()
async def on_startup_operator(settings: kopf.OperatorSettings, **_: Any) -> None:
    from trtop.handlers.startup import configure

    configure(settings, SETTINGS)
    _background.append(resync.start(SETTINGS, RECONCILE_INTERVAL))
    _background.append(autoscaling.start(SETTINGS))
    collecting = gc.start(SETTINGS)
    if collecting is not None:
        _background.append(collecting)


@kopf.on.cleanup()
async def on_cleanup_operator(**_: Any) -> None:
    for task, stopped in _background:
        stopped.set()
        await asyncio.wait_for(task, timeout=30)
    _background.clear()


@kopf.on.resume(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.create(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.update(names.GROUP, names.VERSION, names.PLURAL, field="spec")
def on_change_model_deployment(body: kopf.Body, **_: Any) -> None:
    reconcile(body, SETTINGS)
