"""Test doubles loaded by a real server process through ``--backend tests.serve.fakes:SlowOnnxRuntime``.

ONNX Runtime with injected delays/failures (read from the environment, since it runs in
the server process): ``FAKE_LOAD_DELAY_S`` (seconds before loading), ``FAKE_LOAD_GATE`` (a
path: loading waits until it exists, at most 300 s), ``FAKE_RUN_DELAY_S``
(seconds per batch), ``FAKE_LOAD_FAIL`` (raise while loading), ``FAKE_RUN_FAIL_VALUE`` (raise
when an input holds that number: a request carrying it breaks the backend, warm-up's zeros do not),
``FAKE_RUN_HANG_VALUE`` (a batch holding that number sleeps ``FAKE_RUN_HANG_S``, default an hour: a stuck run).
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
from trtop.serve.runtime import RuntimeOptions
from trtop.serve.types import Feeds, Outputs


class SlowOnnxRuntime(OnnxRuntime):
    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        time.sleep(float(os.environ.get("FAKE_LOAD_DELAY_S", "0")))
        gate = os.environ.get("FAKE_LOAD_GATE")
        deadline = time.monotonic() + 300
        while gate and not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.environ.get("FAKE_LOAD_FAIL"):
            raise RuntimeError("the test asked this load to fail")
        super().__init__(path, options)
        self.run_delay = float(os.environ.get("FAKE_RUN_DELAY_S", "0"))
        self.fail_value = float(os.environ.get("FAKE_RUN_FAIL_VALUE", "nan"))
        self.hang_value = float(os.environ.get("FAKE_RUN_HANG_VALUE", "nan"))
        self.hang_s = float(os.environ.get("FAKE_RUN_HANG_S", "3600"))

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        time.sleep(self.run_delay)
        if any((a == self.hang_value).any() for a in feeds.values()):
            time.sleep(self.hang_s)
        if any((a == self.fail_value).any() for a in feeds.values()):
            raise RuntimeError(f"the test asked inputs holding {self.fail_value:g} to fail")
        return super().run(feeds, outputs)
