"""TensorFlow SavedModel backend: the baseline the project starts from (no conversion needed).

Loaded by ``trtop.serve.runtime.load_runtime`` for ``backend == "tensorflow"`` or a
SavedModel folder given with ``--model``; TensorFlow is imported only here.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.serve.errors import StartupError
from trtop.serve.runtime import FixedIO, RuntimeOptions
from trtop.serve.types import Feeds, Outputs

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


class TensorFlowRuntime(FixedIO):
    """A SavedModel's ``serving_default`` signature, called eagerly on numpy batches."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        import tensorflow as tf  # heavy: only the TensorFlow image imports it

        self._tf: Any = tf
        if not options.use_gpu:
            tf.config.set_visible_devices([], "GPU")
        try:
            tf.config.threading.set_intra_op_parallelism_threads(options.thread_count)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow was initialised earlier in this process; keep its settings
        try:
            self._model: Any = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types for an unreadable SavedModel
            raise StartupError(f"TensorFlow could not load the SavedModel at {path}: {exc}") from exc
        signatures = self._model.signatures
        if SIGNATURE not in signatures:
            raise StartupError(
                f"SavedModel {path} has no {SIGNATURE!r} signature (it has {sorted(signatures)}); "
                "export it with a serving signature"
            )
        self._fn: Any = signatures[SIGNATURE]
        _, kwargs = self._fn.structured_input_signature
        self._inputs = tuple(_spec(name, s) for name, s in sorted(kwargs.items()))
        self._outputs = tuple(_spec(name, s) for name, s in sorted(self._fn.structured_outputs.items()))
        log.info("TensorFlow %s loaded %s", tf.__version__, path)

    @property
    def platform(self) -> str:
        return "tensorflow_savedmodel"

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        result = self._fn(**{name: self._tf.constant(a) for name, a in feeds.items()})
        return {name: np.asarray(result[name].numpy()) for name in outputs}

    def close(self) -> None:
        del self._fn, self._model


def _spec(name: str, spec: Any) -> TensorSpec:
    dtype = spec.dtype.as_numpy_dtype
    if np.dtype(dtype).kind in "OSU":
        raise StartupError(f"tensor {name!r} is a string tensor, which the server does not support")
    dims = spec.shape.as_list() if spec.shape.rank is not None else []
    return TensorSpec(name, np.dtype(dtype).name, tuple(-1 if d is None else int(d) for d in dims))
