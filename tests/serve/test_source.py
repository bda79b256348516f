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
    make_engine_dir(store, affine_record("e-00000000000000c0"))
    make_engine_dir(store, affine_record("e-0000000000000090", target=Target.parse("9.0")))
    settings = ServeSettings(engine_set=json.dumps(["e-0000000000000090", "e-00000000000000c0"]), store_uri=f"file://{store}")
    s = resolve_servable(settings, H100)
    assert s.key == "e-0000000000000090" and s.path is None
    path, record = fetch_servable(s, tmp_path / "cache")
    assert path == tmp_path / "cache" / "e-0000000000000090" / "model.onnx" and path.exists()
    assert record is not None and record.batch.max == 16
    assert resolve_servable(settings, CPU).key == "e-00000000000000c0"


def test_engine_set_problems_are_start_up_errors(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="TRTOP_STORE_URI is not"):
        resolve_servable(ServeSettings(engine_set='["e-0000000000000001"]'), CPU)
    with pytest.raises(StartupError, match="e-00000000000000ff .* is not published"):
        resolve_servable(ServeSettings(engine_set='["e-00000000000000ff"]', store_uri=str(tmp_path)), CPU)
    with pytest.raises(StartupError, match="nothing to serve"):
        resolve_servable(ServeSettings(), CPU)


def _store_with_one_engine(tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "store"
    folder = make_engine_dir(store, affine_record())
    sha = json.loads((folder / "engine.json").read_text())["sha256"]
    return store, sha


def _engine_set(sha: str, key: str = "e-0123456789abcdef") -> str:
    return json.dumps([{"key": key, "target": {"cc": "cpu", "product": None}, "backend": "onnxruntime",
                        "artifact": "model.onnx", "sha256": sha}])


def test_a_tampered_artifact_is_refused_naming_the_key(tmp_path: Path) -> None:
    store, sha = _store_with_one_engine(tmp_path)
    with open(store / "e-0123456789abcdef" / "model.onnx", "ab") as f:
        f.write(b"\0 appended by someone with write access to the store")
    s = resolve_servable(ServeSettings(engine_set=_engine_set(sha), store_uri=str(store)), CPU)
    with pytest.raises(StartupError, match=r"engine e-0123456789abcdef .*has more than \d+ bytes, but its record pins"):
        fetch_servable(s, tmp_path / "cache")
    assert not (tmp_path / "cache" / "e-0123456789abcdef").exists()  # nothing half-checked is cached


def test_a_record_swapped_after_the_operator_pinned_it_is_refused(tmp_path: Path) -> None:
    store, _ = _store_with_one_engine(tmp_path)
    s = resolve_servable(ServeSettings(engine_set=_engine_set("cd" * 32), store_uri=str(store)), CPU)
    with pytest.raises(StartupError, match="engine e-0123456789abcdef .*the engine set pins cdcd"):
        fetch_servable(s, tmp_path / "cache")


def test_a_tampered_cached_copy_is_refused_too(tmp_path: Path) -> None:
    store, sha = _store_with_one_engine(tmp_path)
    s = resolve_servable(ServeSettings(engine_set=_engine_set(sha), store_uri=str(store)), CPU)
    path, _ = fetch_servable(s, tmp_path / "cache")
    path.write_bytes(b"replaced in the pod's cache")
    with pytest.raises(StartupError, match="e-0123456789abcdef"):
        fetch_servable(s, tmp_path / "cache")


def test_a_record_copied_into_another_keys_location_is_not_served(tmp_path: Path) -> None:
    store, sha = _store_with_one_engine(tmp_path)
    other = "e-ffffffffffffffff"
    import shutil
    shutil.copytree(store / "e-0123456789abcdef", store / other)
    with pytest.raises(StartupError, match=f"read from the location of {other}"):
        resolve_servable(ServeSettings(engine_set=json.dumps([other]), store_uri=str(store)), CPU)


def test_an_engine_dir_whose_artifact_links_outside_is_refused(tmp_path: Path) -> None:
    folder = make_engine_dir(tmp_path, affine_record())
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to("/etc/hostname")
    with pytest.raises(StartupError, match="outside the engine folder"):
        resolve_servable(ServeSettings(engine_dir=str(folder)), CPU)


def test_an_engine_dir_with_changed_bytes_is_refused(tmp_path: Path) -> None:
    folder = make_engine_dir(tmp_path, affine_record())
    s = resolve_servable(ServeSettings(engine_dir=str(folder)), CPU)
    (folder / "model.onnx").write_bytes(b"not the built model")
    with pytest.raises(StartupError, match="e-0123456789abcdef.*refusing them"):
        fetch_servable(s, tmp_path / "cache")
