"""kopf registration: the decorators only, each a line or two calling the real handler.

Imported by ``trtop operator`` (kopf.run) and by tests through ``kopf.testing.KopfRunner``.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from trtop import names
from trtop.config import Settings
from trtop.handlers.modeldeployment import reconcile

SETTINGS = Settings.from_env()
RECONCILE_INTERVAL = float(os.environ.get("TRTOP_RECONCILE_INTERVAL_SECONDS", "10"))


@kopf.on.startup()
def on_startup_operator(settings: kopf.OperatorSettings, **_: Any) -> None:
    from trtop.handlers.startup import configure

    configure(settings, SETTINGS)


@kopf.on.resume(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.create(names.GROUP, names.VERSION, names.PLURAL)
@kopf.on.update(names.GROUP, names.VERSION, names.PLURAL, field="spec")
def on_change_model_deployment(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    reconcile(body, patch, logger, SETTINGS)


@kopf.timer(names.GROUP, names.VERSION, names.PLURAL, interval=RECONCILE_INTERVAL, idle=0)
def on_timer_model_deployment(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any) -> None:
    reconcile(body, patch, logger, SETTINGS)
