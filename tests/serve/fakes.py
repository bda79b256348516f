"""Test doubles loaded by a real server process through ``--backend tests.serve.fakes:SlowOnnxRuntime``.

ONNX Runtime with injected delays/failures (read from the environment, since it runs in
the server process): ``FAKE_LOAD_DELAY_S`` (seconds before loading), ``FAKE_RUN_DELAY_S``
(seconds per batch), ``FAKE_LOAD_FAIL`` (raise while loading).
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
        if os.environ.get("FAKE_LOAD_FAIL"):
            raise RuntimeError("the test asked this load to fail")
        super().__init__(path, options)
        self.run_delay = float(os.environ.get("FAKE_RUN_DELAY_S", "0"))

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        time.sleep(self.run_delay)
        return super().run(feeds, outputs)
