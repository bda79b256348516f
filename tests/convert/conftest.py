"""Models made by the tests (tiny, built once per session) and the plumbing to convert them.

TensorFlow costs seconds to import and each model a fraction of one, so every model is
a session fixture; tests that need TensorFlow are marked slow.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.store.conftest import s3_endpoint, s3_env  # noqa: F401 (shared fixtures: a real S3 server)
from trtop.api.engine import BatchProfile, EngineKey, EngineRequest, ModelSource, engine_key
from trtop.api.targets import Target

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def _termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never write /dev/termination-log on a developer's machine."""
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TRTOP_TERMINATION_LOG", str(path))
    return path


def make_request(uri: str, fmt: str, store: Path | str, **changes: Any) -> EngineRequest:
    """A CPU request as the operator would make it (key from engine_key)."""
    model = ModelSource(uri=uri, format=fmt,  # type: ignore[arg-type]
                        digest=changes.pop("digest", None), signature=changes.pop("signature", "serving_default"),
                        input_shapes=changes.pop("input_shapes", {}))
    fields: dict[str, Any] = dict(
        model=model, target=Target.parse(changes.pop("target", "cpu")), backend=changes.pop("backend", "onnxruntime"),
        precision=changes.pop("precision", "fp32"), batch=changes.pop("batch", BatchProfile(1, 4, 8)),
        method=changes.pop("method", "onnx"), workspace_mib=changes.pop("workspace_mib", 1024),
        hardware_compatibility=changes.pop("hardware_compatibility", "none"),
        builder_options=changes.pop("builder_options", {}),
    )
    key = engine_key(**fields, trt_version="test", scope="test")
    request = EngineRequest(key=key, **fields, store_uri=str(store), scope="test")
    return replace(request, **changes)


def with_key(request: EngineRequest, key: str) -> EngineRequest:
    return replace(request, key=EngineKey(key))


# --- models ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def keras_single(models: Path) -> Path:
    """One input, one output, dynamic batch; a Sequential model saved as .keras."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    path = models / "single.keras"
    model.save(path)
    return path


def _multi_io_model() -> Any:
    import keras

    keras.utils.set_random_seed(2)
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.Dense(16, activation="tanh")(h)
    return keras.Model({"a": a, "b": b}, {"logits": keras.layers.Dense(2, name="logits")(h),
                                           "score": keras.layers.Dense(1, activation="sigmoid", name="score")(h)})


@pytest.fixture(scope="session")
def keras_multi(models: Path) -> Path:
    """Two named inputs, two named outputs (dicts), saved as .keras."""
    path = models / "multi.keras"
    _multi_io_model().save(path)
    return path


@pytest.fixture(scope="session")
def keras_h5(models: Path) -> Path:
    """A functional model with a list of outputs, in the legacy HDF5 format."""
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((5,), name="features")
    model = keras.Model(x, [keras.layers.Dense(2)(x), keras.layers.Dense(4)(x)])
    path = models / "legacy.h5"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def savedmodel_signatures(models: Path) -> Path:
    """A tf.Module SavedModel with two signatures; 'scores' has an int input (ids) and two outputs."""
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(4)
            self.w = tf.Variable(rng.standard_normal((6, 3)).astype(np.float32))
            self.table = tf.Variable(rng.standard_normal((10, 6)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            return {"y": tf.matmul(x, self.w)}

        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="dense"),
                                      tf.TensorSpec([None, 2], tf.int64, name="ids")])
        def scores(self, dense: Any, ids: Any) -> Any:
            embedded = tf.reduce_sum(tf.gather(self.table, ids), axis=1)
            h = dense + embedded
            return {"probabilities": tf.nn.softmax(tf.matmul(h, self.w)), "norm": tf.norm(h, axis=1, keepdims=True)}

    module = Model()
    path = models / "signatures_savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "scores": module.scores})
    return path


@pytest.fixture(scope="session")
def savedmodel_open_dims(models: Path) -> Path:
    """An image-like input with open height and width: the request must fill them."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
        def serve(self, image: Any) -> Any:
            return {"mean": tf.reduce_mean(image, axis=[1, 2])}

    module = Model()
    path = models / "open_dims_savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="session")
def savedmodel_unsupported(models: Path) -> Path:
    """Uses Igamma, which tf2onnx 1.17 has no ONNX conversion for."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            return {"y": tf.math.igamma(tf.abs(x) + 1.0, tf.abs(x) + 0.5)}

    module = Model()
    path = models / "unsupported_savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="session")
def onnx_fixed_batch(models: Path) -> Path:
    """An ONNX model written with onnx.helper (no TensorFlow): batch fixed to 1, as many exporters leave it."""
    return write_onnx_gemm(models / "gemm.onnx")


def write_onnx_gemm(path: Path, batch: int | str = 1) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal((3,)).astype(np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "bias"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], initializer=[w, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
