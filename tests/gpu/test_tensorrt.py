"""The shared TensorRT runtime (buckets, profiles, pinned buffers, CUDA graphs) against fake TensorRT and CUDA.

TensorRT cannot run here (see docs/server.md); the fakes in ``fakes.py`` follow the
TensorRT 10 API and keep real bytes in "device" and pinned memory, so padding, graph
replay and buffer reuse are checked on real data.
"""
from __future__ import annotations

import logging
import types
from typing import Any

import numpy as np
import pytest

from tests.gpu.fakes import FakeCuda, FakeEngine, affine, fake_tensorrt, import_with_fake
from trtop.gpu.errors import EngineLoadError, EngineRunError

X = {"x": ("FLOAT", (-1, 4))}
Y = {"y": ("FLOAT", (-1, 4))}


def load(monkeypatch: pytest.MonkeyPatch, cuda: FakeCuda, *, profiles: Any = ((1, 8, 16),), graphs: bool = True,
         **engine: Any) -> tuple[Any, FakeEngine]:
    made = FakeEngine(cuda, engine.pop("inputs", X), engine.pop("outputs", Y), profiles,
                      engine.pop("compute", affine), **engine)
    module = import_with_fake(monkeypatch, fake_tensorrt(lambda plan: made if plan == b"plan" else None),
                              "trtop.gpu.tensorrt")
    return module.TensorRTEngine(b"plan", cuda=cuda, cuda_graphs=graphs, device_index=1), made


def rows(n: int, width: int = 4) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, width)).astype(np.float32)


def test_reads_the_interface_and_the_batch_range_of_every_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, _ = load(monkeypatch, cuda, profiles=[(1, 8, 16), (32, 32, 32)])
    assert [(s.name, s.dtype, s.shape) for s in engine.inputs] == [("x", "float32", (-1, 4))]
    assert [s.name for s in engine.outputs] == ["y"] and engine.platform == "tensorrt_plan"
    assert engine.max_batch == 32 and [tuple(p) for p in engine.profiles] == [(1, 8, 16), (32, 32, 32)]
    assert engine.buckets == (1, 2, 4, 8, 16, 32) and cuda.device_index == 1


def test_prepare_makes_a_context_graph_and_pinned_buffers_per_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, made = load(monkeypatch, cuda)
    engine.prepare([1, 4, 16])
    assert engine.describe_buckets() == [{"batch": b, "profile": 0, "cuda_graph": True} for b in (1, 4, 16)]
    assert len(made.contexts) == 3 and {c.shapes["x"][0] for c in made.contexts} == {1, 4, 16}
    # One activation block, handed to every context (TensorRT 10.1+ user-managed memory).
    assert len({c.memory for c in made.contexts}) == 1 and all(c.user_managed for c in made.contexts)
    assert len(cuda.pinned) == 6 and len(cuda.execs) == 3  # x and y pinned per bucket, one graph each


def test_runs_replay_the_graph_with_this_batchs_data_padded_to_its_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, made = load(monkeypatch, cuda)
    engine.prepare([1, 4, 16])
    runs_before = sum(c.runs for c in made.contexts)
    for n in (3, 4, 1, 11, 3):  # different data through the same graphs: no stale buffers
        x = rows(n)
        y = engine.run({"x": x}, ["y"])["y"]
        assert y.shape == (n, 4)
        np.testing.assert_allclose(y, x * 2 + 1, rtol=1e-6)
    assert cuda.calls.count("launch") - 3 == 5  # every run a graph launch (3 were the capture checks)
    assert sum(c.runs for c in made.contexts) == runs_before  # no plain enqueue at run time


def test_requests_are_stacked_straight_into_the_pinned_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = load(monkeypatch, FakeCuda())
    engine.prepare([8])
    parts = [{"x": rows(1)}, {"x": rows(3) + 10}, {"x": rows(2) - 10}]
    y = engine.run_parts(parts, ["y"])["y"]
    np.testing.assert_allclose(y, np.concatenate([p["x"] for p in parts]) * 2 + 1, rtol=1e-6)
    with pytest.raises(EngineRunError, match=r"inputs \['x'\] are missing"):
        engine.run_parts([{"x": rows(1)}, {}], ["y"])


def test_outputs_are_copies_not_views_of_the_reused_pinned_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = load(monkeypatch, FakeCuda())
    engine.prepare([4])
    first = engine({"x": rows(4)})["y"]
    kept = first.copy()
    engine({"x": rows(4) + 100})
    np.testing.assert_array_equal(first, kept)


def test_each_bucket_gets_the_profile_built_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, made = load(monkeypatch, cuda, profiles=[(1, 4, 8), (1, 1, 1), (2, 2, 2), (4, 4, 4)])
    engine.prepare([1, 2, 4, 8])
    assert {d["batch"]: d["profile"] for d in engine.describe_buckets()} == {1: 1, 2: 2, 4: 3, 8: 0}
    assert sorted((c.shapes["x"][0], c.profile) for c in made.contexts) == [(1, 1), (2, 2), (4, 3), (8, 0)]
    np.testing.assert_allclose(engine.run({"x": rows(7)}, ["y"])["y"], rows(7) * 2 + 1, rtol=1e-6)


def test_a_size_above_every_profile_is_refused_before_anything_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, made = load(monkeypatch, cuda, profiles=[(2, 4, 8)])
    with pytest.raises(EngineRunError, match="batch size 16 is outside every optimization profile.*2..8"):
        engine.prepare([2, 16])
    assert made.contexts == []


def test_sizes_no_profile_takes_move_up_to_the_next_one_that_does(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = load(monkeypatch, FakeCuda(), profiles=[(2, 2, 2), (4, 4, 4), (8, 8, 8)])
    engine.prepare([1, 2, 3, 4, 8])  # e.g. batch_buckets(8) on an engine whose smallest profile is 2
    assert engine.buckets == (2, 4, 8)
    np.testing.assert_allclose(engine({"x": rows(1)})["y"], rows(1) * 2 + 1, rtol=1e-6)


def test_without_prepare_buckets_are_made_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, made = load(monkeypatch, FakeCuda())
    np.testing.assert_allclose(engine({"x": rows(5)})["y"], rows(5) * 2 + 1, rtol=1e-6)
    assert [d["batch"] for d in engine.describe_buckets()] == [8]
    with pytest.raises(EngineRunError, match="17 rows does not fit"):
        engine({"x": rows(17)})


def test_after_prepare_only_its_sizes_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, _ = load(monkeypatch, cuda)
    engine({"x": rows(2)})
    engine.prepare([8])  # the lazily made bucket 2 is freed
    assert [d["batch"] for d in engine.describe_buckets()] == [8] and len(cuda.pinned) == 2
    with pytest.raises(EngineRunError, match="9 rows does not fit the engine's batch sizes \\[8\\]"):
        engine({"x": rows(9)})


def test_capture_failure_falls_back_to_plain_enqueue_and_is_logged_once(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    cuda = FakeCuda()
    engine, made = load(monkeypatch, cuda, breaks_capture=True)
    with caplog.at_level(logging.WARNING, "trtop.gpu.tensorrt"):
        engine.prepare([1, 2, 4])
    assert [r.getMessage() for r in caplog.records if "capture" in r.getMessage()] == [
        "CUDA graph capture failed at batch 1 (TensorRT execute_async_v3 failed at batch 1 (see the TensorRT log)): "
        "that batch size runs with plain enqueues (slower launches, same results)"]
    assert not any(d["cuda_graph"] for d in engine.describe_buckets()) and cuda.graphs == {}
    assert "clear_error" in cuda.calls
    np.testing.assert_allclose(engine.run({"x": rows(3)}, ["y"])["y"], rows(3) * 2 + 1, rtol=1e-6)
    assert "launch" not in cuda.calls


def test_a_capture_cuda_refuses_also_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = load(monkeypatch, FakeCuda(capture_fails=True))
    engine.prepare([2])
    assert engine.describe_buckets()[0]["capture_error"].startswith("CUDA cudaStreamEndCapture failed")
    np.testing.assert_allclose(engine({"x": rows(2)})["y"], rows(2) * 2 + 1, rtol=1e-6)


def test_graphs_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, _ = load(monkeypatch, cuda, graphs=False)
    engine.prepare([4])
    assert engine.describe_buckets() == [{"batch": 4, "profile": 0, "cuda_graph": False,
                                          "capture_error": "CUDA graphs are turned off"}]
    np.testing.assert_allclose(engine({"x": rows(4)})["y"], rows(4) * 2 + 1, rtol=1e-6)
    assert cuda.graphs == {} and "launch" not in cuda.calls


def test_without_user_managed_memory_each_context_allocates_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, made = load(monkeypatch, FakeCuda(), activation_bytes=None)  # TensorRT < 10.1
    engine.prepare([1, 2])
    assert [c.user_managed for c in made.contexts] == [False, False]
    np.testing.assert_allclose(engine({"x": rows(2)})["y"], rows(2) * 2 + 1, rtol=1e-6)


def test_several_inputs_and_only_the_requested_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    def model(feeds: Any) -> dict[str, np.ndarray]:
        return {"sum": feeds["a"] + feeds["b"].astype(np.float32), "n": np.full((len(feeds["a"]), 1), 7, np.int64)}

    engine, _ = load(monkeypatch, FakeCuda(), inputs={"a": ("FLOAT", (-1, 3)), "b": ("INT32", (-1, 3))},
                     outputs={"sum": ("FLOAT", (-1, 3)), "n": ("INT64", (-1, 1))}, compute=model, graphs=False)
    engine.prepare([4])
    a, b = np.ones((3, 3), np.float32), np.arange(9, dtype=np.int32).reshape(3, 3)
    out = engine.run({"a": a, "b": b}, ["sum"])
    assert list(out) == ["sum"]
    np.testing.assert_array_equal(out["sum"], a + b)


def test_a_static_engine_pads_to_its_fixed_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = load(monkeypatch, FakeCuda(), inputs={"x": ("FLOAT", (8, 4))}, outputs={"y": ("FLOAT", (8, 4))})
    assert engine.max_batch == 8 and engine.buckets == (1, 2, 4, 8)
    engine.prepare([8])
    np.testing.assert_allclose(engine({"x": rows(3)})["y"], rows(3) * 2 + 1, rtol=1e-6)


def test_wrong_inner_shapes_fail_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = load(monkeypatch, FakeCuda())
    with pytest.raises(EngineRunError, match="input 'x' has shape \\[2, 5\\]; the engine takes \\[2, 4\\]"):
        engine({"x": np.zeros((2, 5), np.float32)})
    with pytest.raises(EngineRunError, match="inputs \\['x'\\] are missing"):
        engine({"z": np.zeros((2, 4), np.float32)})


@pytest.mark.parametrize("inputs, message", [
    ({"x": ("FLOAT", (-1, -1))}, "fixed other dimensions"),
    ({"x": ("BF16", (-1, 4))}, "numpy cannot hold"),
])
def test_engines_this_runtime_cannot_serve_are_refused_at_load(monkeypatch: pytest.MonkeyPatch, inputs: Any,
                                                              message: str) -> None:
    with pytest.raises(EngineLoadError, match=message):
        load(monkeypatch, FakeCuda(), inputs=inputs)


def test_a_plan_for_another_gpu_fails_with_tensorrts_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    module = import_with_fake(monkeypatch, fake_tensorrt(lambda plan: None), "trtop.gpu.tensorrt")
    with pytest.raises(EngineLoadError, match="could not load m.plan: .*expecting compute 8.9 got compute 9.0"):
        module.TensorRTEngine(b"other", cuda=FakeCuda(), origin="m.plan")


def test_close_frees_every_buffer_graph_and_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    engine, _ = load(monkeypatch, cuda)
    engine.prepare([1, 2, 4, 8, 16])
    engine({"x": rows(3)})
    engine.close()
    assert cuda.held() == {"device": 0, "pinned": 0, "graphs": 0, "execs": 0, "streams": 0}


def test_type_stubs_are_not_taken_for_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImportError, match="type stubs"):
        import_with_fake(monkeypatch, types.ModuleType("tensorrt"), "trtop.gpu.tensorrt")
