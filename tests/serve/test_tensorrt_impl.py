"""The server's TensorRT backend: the shared ``trtop.gpu`` runtime behind the ``Runtime`` interface, errors translated.

TensorRT cannot run on the machines this is developed on (see docs/server.md); the fake
``tensorrt`` and CUDA of ``tests/gpu/fakes.py`` follow the TensorRT 10 API and hold real
bytes, so the data path (pinned copy in, graph replay, copy out, padding) is real.
The engine class itself is tested in ``tests/gpu/test_tensorrt.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gpu.fakes import FakeCuda, FakeEngine, affine, fake_tensorrt, import_with_fake
from trtop.serve.errors import InferenceFailed, StartupError
from trtop.serve.runtime import RuntimeOptions, resolve_backend


@pytest.fixture
def cuda() -> FakeCuda:
    return FakeCuda()


@pytest.fixture
def trt_impl(monkeypatch: pytest.MonkeyPatch, cuda: FakeCuda) -> Any:
    engine = FakeEngine(cuda, {"x": ("FLOAT", (-1, 4))}, {"y": ("FLOAT", (-1, 4))}, [(1, 8, 16)], affine)
    return import_with_fake(monkeypatch, fake_tensorrt(lambda plan: engine if plan == b"good plan" else None),
                            "trtop.serve.backends.tensorrt_impl")


def plan(tmp_path: Path, data: bytes = b"good plan") -> Path:
    path = tmp_path / "model.plan"
    path.write_bytes(data)
    return path


def test_the_backend_table_loads_the_shared_engine(trt_impl: Any, cuda: FakeCuda, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from trtop.gpu import cuda as cuda_module
    from trtop.gpu.tensorrt import TensorRTEngine

    monkeypatch.setattr(cuda_module, "_default", cuda)
    rt = resolve_backend("tensorrt")(plan(tmp_path), RuntimeOptions(device_index=0))
    assert isinstance(rt, TensorRTEngine)  # the class the converter verified the engine with
    assert [(s.name, s.dtype, s.shape) for s in rt.inputs] == [("x", "float32", (-1, 4))]
    assert rt.max_batch == 16 and rt.platform == "tensorrt_plan" and cuda.device_index == 0


def test_prepared_buckets_serve_padded_batches(trt_impl: Any, cuda: FakeCuda, tmp_path: Path) -> None:
    rt = trt_impl.TensorRTRuntime(plan(tmp_path), RuntimeOptions(), cuda=cuda)
    rt.prepare([1, 2, 4, 8, 16])
    for rows in (3, 10, 2, 16):
        x = np.random.default_rng(rows).random((rows, 4), np.float32)
        np.testing.assert_allclose(rt.run({"x": x}, ["y"])["y"], x * 2 + 1, rtol=1e-6)
    assert all(d["cuda_graph"] for d in rt.describe_buckets())
    rt.close()
    assert cuda.held() == {"device": 0, "pinned": 0, "graphs": 0, "execs": 0, "streams": 0}


def test_graphs_follow_the_runtime_option(trt_impl: Any, cuda: FakeCuda, tmp_path: Path) -> None:
    rt = trt_impl.TensorRTRuntime(plan(tmp_path), RuntimeOptions(cuda_graphs=False), cuda=cuda)
    rt.prepare([4])
    assert not rt.describe_buckets()[0]["cuda_graph"]


def test_batches_the_engine_cannot_take_fail_the_request(trt_impl: Any, cuda: FakeCuda, tmp_path: Path) -> None:
    rt = trt_impl.TensorRTRuntime(plan(tmp_path), RuntimeOptions(), cuda=cuda)
    with pytest.raises(InferenceFailed, match="17 rows does not fit the engine's batch sizes"):
        rt.run({"x": np.zeros((17, 4), np.float32)}, ["y"])


def test_buckets_outside_the_profiles_fail_the_start(trt_impl: Any, cuda: FakeCuda, tmp_path: Path) -> None:
    rt = trt_impl.TensorRTRuntime(plan(tmp_path), RuntimeOptions(), cuda=cuda)
    with pytest.raises(StartupError, match="batch sizes \\[1, 32\\].*outside every optimization profile"):
        rt.prepare([1, 32])


def test_an_engine_for_another_gpu_fails_to_load_with_tensorrts_reason(trt_impl: Any, cuda: FakeCuda,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="expecting compute 8.9 got compute 9.0.*rebuild it for this GPU.*"
                                           "spec.engine.targets"):
        trt_impl.TensorRTRuntime(plan(tmp_path, b"other"), RuntimeOptions(), cuda=cuda)
