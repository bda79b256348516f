"""The backend table and the ONNX Runtime / TensorFlow backends on tiny models."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trtop.serve.errors import StartupError
from trtop.serve.runtime import RuntimeOptions, guess_backend, load_runtime, resolve_backend

from .conftest import make_affine_onnx


def test_backend_names_and_import_paths() -> None:
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    assert resolve_backend("onnxruntime") is OnnxRuntime
    assert resolve_backend("trtop.serve.backends.onnxruntime_impl:OnnxRuntime") is OnnxRuntime
    with pytest.raises(StartupError, match="not one of"):
        resolve_backend("pytorch")
    with pytest.raises(StartupError, match="not installed here"):
        resolve_backend("no_such_module_xyz:Thing")
    with pytest.raises(StartupError, match="has no attribute"):
        resolve_backend("trtop.serve.runtime:Nope")


def test_guess_backend(tmp_path: Path) -> None:
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert guess_backend(tmp_path / "sm") == "tensorflow"
    assert guess_backend(tmp_path / "m.onnx") == "onnxruntime"
    assert guess_backend(tmp_path / "m.plan") == "tensorrt"
    with pytest.raises(StartupError, match="--backend"):
        guess_backend(tmp_path / "m.bin")


def test_onnxruntime_runs_a_batch(affine_onnx: Path) -> None:
    rt = load_runtime("onnxruntime", affine_onnx, RuntimeOptions(threads=1))
    assert [(s.name, s.dtype, s.shape) for s in rt.inputs] == [("x", "float32", (-1, 4))]
    assert [s.name for s in rt.outputs] == ["y", "s"] and rt.max_batch is None
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = rt.run({"x": np.frombuffer(x.tobytes(), np.float32).reshape(2, 4)}, ["s", "y"])  # read-only input
    np.testing.assert_array_equal(out["y"], x * 2 + 1)
    np.testing.assert_array_equal(out["s"], x.sum(axis=1, keepdims=True))
    rt.close()


def test_onnxruntime_fixed_batch_is_the_max(tmp_path: Path) -> None:
    rt = load_runtime("onnxruntime", make_affine_onnx(tmp_path / "b1.onnx", batch=1), RuntimeOptions(threads=1))
    assert rt.max_batch == 1


def test_unloadable_model_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(StartupError, match="ONNX Runtime could not load"):
        load_runtime("onnxruntime", tmp_path / "bad.onnx", RuntimeOptions(threads=1))
    with pytest.raises(StartupError, match="does not exist"):
        load_runtime("onnxruntime", tmp_path / "missing.onnx", RuntimeOptions())


@pytest.mark.slow
def test_tensorflow_savedmodel(tmp_path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")

    class Affine(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: object) -> dict[str, object]:
            return {"y": x * 2.0 + 1.0}

    module = Affine()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    rt = load_runtime(guess_backend(tmp_path / "sm"), tmp_path / "sm", RuntimeOptions(threads=1, use_gpu=False))
    assert [(s.name, s.dtype, s.shape) for s in rt.inputs] == [("x", "float32", (-1, 4))]
    assert rt.platform == "tensorflow_savedmodel"
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(rt.run({"x": x}, ["y"])["y"], x * 3)


@pytest.mark.parametrize("instances,threads,backend,gpu,cores,expected", [
    (0, 0, "onnxruntime", False, 2, (2, 1)),  # CPU: side-by-side single-threaded runs
    (0, 0, "onnxruntime", False, 16, (4, 4)),  # capped: more would cost latency at low load
    (0, 0, "onnxruntime", True, 16, (1, 1)),  # CUDA provider: one batch at a time, one CPU thread
    (0, 0, "tensorrt", True, 8, (1, 1)),
    (1, 0, "onnxruntime", False, 8, (1, 8)),  # explicit settings win
    (3, 2, "onnxruntime", False, 8, (3, 2)),
])
def test_parallelism(instances: int, threads: int, backend: str, gpu: bool, cores: int,
                     expected: tuple[int, int]) -> None:
    from trtop.serve.runtime import parallelism

    assert parallelism(instances, threads, backend=backend, gpu=gpu, cores=cores) == expected


def test_onnxruntime_on_cpu_keeps_one_session_for_every_bucket(tmp_path: Path) -> None:
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    rt = OnnxRuntime(make_affine_onnx(tmp_path / "a.onnx"), RuntimeOptions(threads=1, use_gpu=False))
    rt.prepare((1, 2, 4))
    assert rt._by_batch == {}
    out = rt.run({"x": np.ones((4, 4), np.float32)}, ["y"])
    assert out["y"].shape == (4, 4)


@pytest.mark.parametrize("text,cores,quota", [("max 100000\n", 0, 0.0), ("200000 100000\n", 2, 2.0),
                                              ("150000 100000", 2, 1.5), ("50000 100000", 1, 0.5),
                                              ("garbage", 0, 0.0)])
def test_the_cgroup_cpu_limit_in_whole_cores_and_as_set(tmp_path: Path, text: str, cores: int, quota: float) -> None:
    from trtop.serve.runtime import cgroup_cpu_limit, cgroup_cpu_quota

    (tmp_path / "cpu.max").write_text(text)
    assert cgroup_cpu_limit(str(tmp_path / "cpu.max")) == cores
    assert cgroup_cpu_quota(str(tmp_path / "cpu.max")) == quota
    absent, no_v1 = str(tmp_path / "absent"), str(tmp_path / "no-v1")
    assert cgroup_cpu_limit(absent, no_v1) == 0 and cgroup_cpu_quota(absent, no_v1) == 0.0


@pytest.mark.parametrize("quota_us,quota", [("-1\n", 0.0), ("400000\n", 4.0), ("150000\n", 1.5)])
def test_a_cgroup_v1_cpu_limit_is_read_where_there_is_no_v2(tmp_path: Path, quota_us: str, quota: float) -> None:
    from trtop.serve.runtime import cgroup_cpu_limit, cgroup_cpu_quota

    (tmp_path / "cpu.cfs_quota_us").write_text(quota_us)
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "cpu.max"), str(tmp_path)) == quota
    assert cgroup_cpu_limit(str(tmp_path / "cpu.max"), str(tmp_path)) == (2 if quota == 1.5 else int(quota))


@pytest.mark.parametrize("graphs", [True, False])
def test_bound_buffers_per_bucket_give_each_batch_its_own_answer(tmp_path: Path, graphs: bool) -> None:
    """The IO-binding path the CUDA provider uses, run here on CPU buffers: checked against the plain
    session at set-up, then every run copies into the bucket's bound buffers (two slots in use at once)."""
    from concurrent.futures import ThreadPoolExecutor

    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    path = make_affine_onnx(tmp_path / "a.onnx")
    options = RuntimeOptions(threads=1, use_gpu=False, cuda_graphs=graphs, slots=2)
    rt = OnnxRuntime(path, options)
    for size in (1, 4):
        rt._by_batch[size] = rt._open(path, options, ("batch", size))[0]
    rt._bind("batch", (1, 4), device="cpu")
    assert rt._bound

    def one(v: float) -> None:
        x = np.full((4, 4), v, np.float32)
        out = rt.run({"x": x}, ["y", "s"])
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
        np.testing.assert_array_equal(out["s"], np.full((4, 1), 4 * v, np.float32))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, [float(i) for i in range(40)]))
    assert rt.run({"x": np.ones((2, 4), np.float32)}, ["y"])["y"].shape == (2, 4)  # no bucket: plain session
    # The scheduler runs whole batches on the slots' own threads (where the bound sessions live).
    executor = rt.executor
    assert executor is not None
    futures = [executor.submit(lambda v=v: (threading.current_thread().name, rt.run({"x": np.full((4, 4), v, np.float32)},
                                                                                    ["y"])["y"][0, 0])) for v in range(6)]
    for v, f in enumerate(futures):
        name, y = f.result(5)
        assert name.startswith("trtop-gpu-slot-") and y == 2 * v + 1
    rt.close()


def test_the_event_loops_thread_gets_a_batch_1_session_of_its_own(tmp_path: Path) -> None:
    """``bind_on_loop`` (the IO-binding path on CPU buffers here): batch 1 gets a session bound and checked on
    the calling thread, which then runs it there; other threads still hand batch 1 to a slot's thread, and
    other sizes stay on the slots."""
    from concurrent.futures import ThreadPoolExecutor

    from trtop.serve.backends import onnxruntime_bind
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    path = make_affine_onnx(tmp_path / "a.onnx")
    options = RuntimeOptions(threads=1, use_gpu=False, slots=2)
    rt = OnnxRuntime(path, options)
    for size in (1, 4):
        rt._by_batch[size] = rt._open(path, options, ("batch", size))[0]
    rt._bind("batch", (1, 4), device="cpu")
    threads: list[str] = []
    run = onnxruntime_bind.Bound.run

    def noted(self: onnxruntime_bind.Bound, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        threads.append(threading.current_thread().name)
        return run(self, feeds, names)

    onnxruntime_bind.Bound.run = noted  # type: ignore[method-assign]
    try:
        assert rt.bind_on_loop() == frozenset({1})
        assert rt.bind_on_loop() == frozenset()  # once
        here = threading.current_thread().name
        threads.clear()
        out = rt.run({"x": np.full((1, 4), 3.0, np.float32)}, ["y"])
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 7.0))
        assert threads == [here]
        threads.clear()
        with ThreadPoolExecutor(1, thread_name_prefix="elsewhere") as other:
            out = other.submit(rt.run, {"x": np.ones((1, 4), np.float32)}, ["y"]).result(5)
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 3.0))
        rt.run({"x": np.ones((4, 4), np.float32)}, ["y"])
        assert len(threads) == 2 and all(t.startswith("trtop-gpu-slot-") for t in threads)
    finally:
        onnxruntime_bind.Bound.run = run  # type: ignore[method-assign]
        rt.close()


def test_a_bucket_whose_bound_run_differs_stays_on_the_plain_session(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from trtop.serve.backends import onnxruntime_bind
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    path = make_affine_onnx(tmp_path / "a.onnx")
    options = RuntimeOptions(threads=1, use_gpu=False)
    rt = OnnxRuntime(path, options)
    rt._by_batch[2] = rt._open(path, options, ("batch", 2))[0]
    broken = onnxruntime_bind.Bound.run

    def stale(self: onnxruntime_bind.Bound, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        return {k: v + 1 for k, v in broken(self, feeds, names).items()}

    monkeypatch.setattr(onnxruntime_bind.Bound, "run", stale)
    rt._bind("batch", (2,), device="cpu")
    monkeypatch.undo()
    assert not rt._bound
    np.testing.assert_array_equal(rt.run({"x": np.zeros((2, 4), np.float32)}, ["y"])["y"], np.ones((2, 4)))


@pytest.mark.parametrize("narrow_s,wide_s,widened", [(1.0, 0.5, True), (1.0, 0.9, False)])
def test_a_lone_cpu_run_uses_every_core_only_where_that_is_faster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  narrow_s: float, wide_s: float, widened: bool) -> None:
    from trtop.serve.backends import onnxruntime_impl
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    monkeypatch.setattr(onnxruntime_impl, "default_threads", lambda: 2)
    monkeypatch.setattr(onnxruntime_impl, "_time_pair", lambda *a: (narrow_s, wide_s))
    rt = OnnxRuntime(make_affine_onnx(tmp_path / "a.onnx"), RuntimeOptions(threads=1, use_gpu=False, slots=2))
    rt.prepare((1, 2, 4))
    assert (rt._wide is not None) is widened
    if widened:  # its threads spin while it runs (sleeping between parallel sections cost all of its gain)...
        options = rt._wide.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"  # ...and only then
    assert rt._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = np.ones((3, 4), np.float32)
    used: list[str] = []

    class Noted:  # which session ran
        def __init__(self, label: str, session: Any) -> None:
            self.label, self.session = label, session

        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
            used.append(self.label)
            return self.session.run(names, feeds)

    rt._session = Noted("narrow", rt._session)
    if widened:
        rt._wide = Noted("wide", rt._wide)
    np.testing.assert_array_equal(rt.run({"x": x}, ["y"])["y"], 2 * x + 1)  # nothing else runs, yet not alone
    np.testing.assert_array_equal(rt.run_alone({"x": x}, ["y"])["y"], 2 * x + 1)  # the scheduler says alone
    assert used == ["narrow", "wide" if widened else "narrow"]


def test_a_cpu_runtime_pins_nothing_and_merges_its_batches(tmp_path: Path) -> None:
    """Page-locking request memory and copying batches request by request are for the CUDA provider's bound
    buckets only; on CPU the scheduler merges (``run_rows`` answers None)."""
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    rt = OnnxRuntime(make_affine_onnx(tmp_path / "a.onnx"), RuntimeOptions(threads=1, use_gpu=False))
    rt.prepare((1, 2, 4))
    assert rt.pin_host(0x1000, 4096) is False
    assert rt.run_rows([{"x": np.ones((1, 4), np.float32)}] * 2, 2, ["y"]) is None
    rt.close()


def test_the_two_sessions_are_timed_in_turns(tmp_path: Path) -> None:
    """Lone-run sessions are compared run for run, alternating (a shared machine's speed moves between two
    blocks of runs); each figure is the best of its own session's runs (a slow spell must not hide what the
    cores can do), and a slow model is timed fewer times (bounded start-up)."""
    from trtop.serve.backends.onnxruntime_impl import _time_pair

    order: list[str] = []

    class Timed:
        def __init__(self, name: str, seconds: list[float]) -> None:
            self.name, self.seconds = name, iter(seconds)

        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> None:
            order.append(self.name)
            time.sleep(next(self.seconds))

    # Sleeps far apart: a loaded two-core machine oversleeps a 1 ms sleep by 3 ms (CI, twenty-sixth session).
    narrow, wide = _time_pair(Timed("n", [0.02] * 4), Timed("w", [0.005, 0.04, 0.005, 0.04]), ["y"], {}, runs=3)
    assert order == ["n", "w"] + ["n", "w"] * 3
    assert 0.019 < narrow < 0.035 and 0.0045 < wide < 0.02  # the wide session's best, not its slow runs
    order.clear()
    _time_pair(Timed("n", [0.01] * 9), Timed("w", [0.01] * 9), ["y"], {}, runs=8, min_runs=2, budget_s=0.03)
    assert 6 <= len(order) <= 8  # two or three pairs after the warm-ups, not eight


def test_request_memory_that_cannot_be_page_locked_stops_the_held_copies(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``pin_host`` fails (the platform refuses to lock the arena), the bound pool's copies let go of the GIL
    (``BoundPool.stop_holding``): from pageable memory the driver stages each copy before it returns."""
    from trtop.gpu import cuda
    from trtop.serve.backends.onnxruntime_bind import BoundPool
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime

    def refuse() -> None:
        raise OSError("cudaHostRegister: operation not permitted")

    rt = OnnxRuntime(make_affine_onnx(tmp_path / "a.onnx"), RuntimeOptions(threads=1, use_gpu=False))
    rt.prepare((1, 2))
    pool = BoundPool(1, handoff_s=0.001)
    pool.add(2, [])
    rt._bound = pool  # as on a GPU with bound buckets, handing off ...
    rt._by_batch = {2: rt._session}  # ... and a session per batch size (the CUDA provider's)
    monkeypatch.setattr(cuda, "default_cuda", refuse)
    copier = pool.copier(0)
    assert copier.held
    assert rt.pin_host(0x1000, 1 << 20) is False
    assert not copier.held and not pool.copier(1).held
    pool.close()
    rt.close()
