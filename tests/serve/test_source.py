"""Resolving what to serve: a model file, an engine folder, or the engine set + a file store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtop.api.targets import Target
from trtop.serve.device import Device
from trtop.serve.errors import StartupError
from trtop.serve.settings import ServeSettings
from trtop.serve.source import fetch_servable, resolve_servable

from .conftest import affine_record, make_engine_dir

CPU = Device("cpu")
H100 = Device("9.0", "NVIDIA-H100-80GB-HBM3")


def test_model_file_backend_is_guessed(affine_onnx: Path) -> None:
    s = resolve_servable(ServeSettings(model_path=str(affine_onnx)), CPU)
    assert (s.backend, s.path) == ("onnxruntime", affine_onnx)
    assert resolve_servable(ServeSettings(model_path=str(affine_onnx), backend="tensorflow"), CPU).backend == "tensorflow"


def test_engine_dir_is_checked_against_the_device(tmp_path: Path) -> None:
    folder = make_engine_dir(tmp_path, affine_record())
    s = resolve_servable(ServeSettings(engine_dir=str(folder)), CPU)
    assert (s.key, s.backend, s.path) == ("e-0123456789abcdef", "onnxruntime", folder / "model.onnx")
    gpu_dir = make_engine_dir(tmp_path / "gpu", affine_record(target=Target.parse("8.9"), backend="tensorrt",
                                                              artifact="model.plan"))
    with pytest.raises(StartupError, match="no engine in the engine set runs on this device"):
        resolve_servable(ServeSettings(engine_dir=str(gpu_dir)), H100)


def test_engine_dir_without_engine_json(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="engine.json does not exist"):
        resolve_servable(ServeSettings(engine_dir=str(tmp_path)), CPU)


def test_engine_set_of_keys_reads_records_from_the_store_and_fetches(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_engine_dir(store, affine_record("e-cpu"))
    make_engine_dir(store, affine_record("e-sm90", target=Target.parse("9.0")))
    settings = ServeSettings(engine_set=json.dumps(["e-sm90", "e-cpu"]), store_uri=f"file://{store}")
    s = resolve_servable(settings, H100)
    assert s.key == "e-sm90" and s.path is None
    path, record = fetch_servable(s, tmp_path / "cache")
    assert path == tmp_path / "cache" / "e-sm90" / "model.onnx" and path.exists()
    assert record is not None and record.batch.max == 16
    assert resolve_servable(settings, CPU).key == "e-cpu"


def test_engine_set_problems_are_start_up_errors(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="TRTOP_STORE_URI is not"):
        resolve_servable(ServeSettings(engine_set='["e-1"]'), CPU)
    with pytest.raises(StartupError, match="e-missing .* is not published"):
        resolve_servable(ServeSettings(engine_set='["e-missing"]', store_uri=str(tmp_path)), CPU)
    with pytest.raises(StartupError, match="nothing to serve"):
        resolve_servable(ServeSettings(), CPU)
