"""The whole pipeline on CPU: models made by the tests -> ONNX -> ONNX Runtime engine -> verified -> published."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.convert.conftest import make_request, with_key
from trtop.api.engine import BatchProfile, EngineKey, TensorSpec
from trtop.convert import errors
from trtop.convert.pipeline import convert
from trtop.convert.source import digest_of
from trtop.store.filesystem import FilesystemStore

pytestmark = pytest.mark.slow


def run(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    work = Path(tempfile.mkdtemp(prefix="work-", dir=tmp_path))
    return convert(request, FilesystemStore(request.store_uri), work)


def published(store: Path, key: str) -> tuple[dict, Path]:  # type: ignore[type-arg]
    """The record and the engine's folder as a reader gets them (fetched and checked)."""
    folder = FilesystemStore(str(store)).fetch(EngineKey(key), Path(tempfile.mkdtemp(prefix="fetched-", dir=store.parent)))
    return json.loads((folder / "engine.json").read_text()), folder


def test_keras_model_becomes_a_verified_onnxruntime_engine(keras_single: Path, tmp_path: Path) -> None:
    import keras

    store = tmp_path / "engines"
    request = make_request(str(keras_single), "keras", store, batch=BatchProfile(1, 4, 16))
    outcome = run(request, tmp_path)
    assert not outcome.reused
    record, folder = published(store, request.key)
    assert record["key"] == request.key and record["target"] == {"cc": "cpu", "product": None}
    assert record["backend"] == "onnxruntime" and record["artifact"] == "model.onnx"
    assert record["precision"] == "fp32" and record["batch"] == {"min": 1, "opt": 4, "max": 16}
    assert record["model_digest"] == digest_of(keras_single)
    [inp] = record["inputs"]
    assert inp["shape"] == [-1, 4] and inp["dtype"] == "float32"
    assert [o["shape"] for o in record["outputs"]] == [[-1, 3]]
    assert record["parity"]["max_abs_error"] < 1e-4 and record["parity"]["batch"] == 4
    assert set(record["benchmark"]) == {"batch_opt", "batch_max"}
    assert record["benchmark"]["batch_max"]["batch"] == 16 and record["benchmark"]["batch_opt"]["p50_ms"] > 0
    for name in ("converter", "onnx", "onnxruntime", "tensorflow", "tf2onnx", "keras"):
        assert record["versions"][name]
    assert record["versions"]["opset"] == "17"
    assert record["build_seconds"] > 0 and record["created"].endswith("Z")
    assert sorted(p.name for p in folder.iterdir()) == ["engine.json", "model.onnx"]
    artifact = (folder / "model.onnx").read_bytes()  # the record pins the artifact's bytes
    assert record["sha256"] == hashlib.sha256(artifact).hexdigest() and record["size"] == len(artifact)

    # The published artifact itself agrees with Keras, at a batch size never used in the build.
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(9).standard_normal((11, 4)).astype(np.float32)
    [got] = session.run(None, {inp["name"]: x})
    want = keras.saving.load_model(keras_single)(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rerun_with_the_same_key_reuses_the_engine(keras_single: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(str(keras_single), "keras", store)
    first = run(request, tmp_path)
    before = (store / request.key / "engine.json").read_text()
    # Same key, and a model URI that no longer exists: a rebuild would fail, reuse must not look.
    gone = with_key(make_request(str(tmp_path / "gone.keras"), "keras", store), request.key)
    again = run(gone, tmp_path)
    assert again.reused and dataclasses.replace(again.record, folder="") == first.record  # folder: where it was stored
    assert set(again.stages) == {"lookup"}
    assert (store / request.key / "engine.json").read_text() == before


def test_keras_dict_inputs_and_outputs(keras_multi: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(str(keras_multi), "keras", store)
    run(request, tmp_path)
    record, _ = published(store, request.key)
    assert [i["name"] for i in record["inputs"]] == ["a", "b"]
    assert sorted(o["name"] for o in record["outputs"]) == ["logits", "score"]
    assert record["parity"]["max_abs_error"] < 1e-4


def test_legacy_h5_with_a_list_of_outputs(keras_h5: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(str(keras_h5), "keras", store)
    run(request, tmp_path)
    record, _ = published(store, request.key)
    assert [(o["name"], o["shape"]) for o in record["outputs"]] == [("output_0", [-1, 2]), ("output_1", [-1, 4])]


def test_savedmodel_signature_chosen_by_name(savedmodel_signatures: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    default = make_request(str(savedmodel_signatures), "savedmodel", store)
    named = make_request(str(savedmodel_signatures), "savedmodel", store, signature="scores")
    run(default, tmp_path)
    run(named, tmp_path)
    assert [o["name"] for o in published(store, default.key)[0]["outputs"]] == ["y"]
    record, _ = published(store, named.key)
    assert {i["name"]: i["dtype"] for i in record["inputs"]} == {"dense": "float32", "ids": "int64"}
    assert sorted(o["name"] for o in record["outputs"]) == ["norm", "probabilities"]
    assert record["parity"]["max_abs_error"] < 1e-4


def test_unknown_signature_names_the_ones_there_are(savedmodel_signatures: Path, tmp_path: Path) -> None:
    request = make_request(str(savedmodel_signatures), "savedmodel", tmp_path / "e", signature="predict")
    with pytest.raises(errors.BadRequestError, match=r"no signature 'predict'.*\['scores', 'serving_default'\]"):
        run(request, tmp_path)


def test_open_dims_are_filled_from_the_request(savedmodel_open_dims: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(str(savedmodel_open_dims), "savedmodel", store,
                           input_shapes={"image": (-1, 8, 8, 3)})
    run(request, tmp_path)
    assert published(store, request.key)[0]["inputs"] == [
        {"name": "image", "dtype": "float32", "shape": [-1, 8, 8, 3]}]


def test_open_dims_without_shapes_is_a_user_error(savedmodel_open_dims: Path, tmp_path: Path) -> None:
    request = make_request(str(savedmodel_open_dims), "savedmodel", tmp_path / "e")
    with pytest.raises(errors.BadRequestError, match="input 'image' has open dimension 1.*model.input_shapes") as e:
        run(request, tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR and e.value.stage == "onnx"


def test_onnx_model_with_fixed_batch_gets_a_dynamic_one(onnx_fixed_batch: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(f"file://{onnx_fixed_batch}", "onnx", store, batch=BatchProfile(1, 8, 32))
    run(request, tmp_path)
    record, folder = published(store, request.key)
    assert record["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    assert record["parity"]["batch"] == 8
    assert record["buckets"] == [1, 2, 4, 8, 16, 32]  # the sizes the server pads to and warms
    dims = onnx.load(str(folder / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"


def test_fp16_on_onnxruntime(keras_multi: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(str(keras_multi), "keras", store, precision="fp16")
    run(request, tmp_path)
    record, folder = published(store, request.key)
    assert record["precision"] == "fp16"
    assert 0 < record["parity"]["max_abs_error"] < 1e-2  # really fp16: not bit-equal to fp32
    weights = onnx.load(str(folder / "model.onnx")).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert [i["dtype"] for i in record["inputs"]] == ["float32", "float32"]  # same interface for clients


def test_parity_beyond_tolerance_fails_the_build(keras_multi: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(str(keras_multi), "keras", store, precision="fp16",
                           builder_options={"verify_atol": "1e-9", "verify_rtol": "1e-9"})
    with pytest.raises(errors.ParityError, match="beyond tolerance.*verify_atol") as e:
        run(request, tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR
    assert not (store / request.key).exists()


@pytest.mark.parametrize("precision", ["int8", "bf16", "fp8"])
def test_precisions_onnxruntime_cannot_honour_are_refused(onnx_fixed_batch: Path, tmp_path: Path,
                                                          precision: str) -> None:
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", precision=precision)
    with pytest.raises(errors.UnsupportedPrecisionError, match=f"{precision}.*not available.*use fp32 or fp16"):
        run(request, tmp_path)


def test_sample_data_is_used_for_verification(onnx_fixed_batch: Path, tmp_path: Path) -> None:
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=np.ones((3, 4), np.float64))  # dtype is cast to the input's
    store = tmp_path / "engines"
    request = make_request(str(onnx_fixed_batch), "onnx", store, sample_data_uri=str(samples))
    run(request, tmp_path)
    assert published(store, request.key)[0]["parity"]["batch"] == 3


def test_digest_pins_the_model(keras_single: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    good = make_request(str(keras_single), "keras", store, digest=digest_of(keras_single))
    run(good, tmp_path)
    bad = make_request(str(keras_single), "keras", store, digest="sha256:" + "0" * 64)
    with pytest.raises(errors.DigestMismatchError, match="has digest sha256:.*pins sha256:0000") as e:
        run(bad, tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR and e.value.stage == "fetch"


def test_a_savedmodel_folder_digest_is_of_the_tree(savedmodel_signatures: Path, tmp_path: Path) -> None:
    request = make_request(str(savedmodel_signatures), "savedmodel", tmp_path / "e",
                           digest=digest_of(savedmodel_signatures))
    run(request, tmp_path)


def test_unsupported_op_is_named(savedmodel_unsupported: Path, tmp_path: Path) -> None:
    request = make_request(str(savedmodel_unsupported), "savedmodel", tmp_path / "e")
    with pytest.raises(errors.UnsupportedOpError, match="no ONNX equivalent: Igamma") as e:
        run(request, tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR


@pytest.mark.parametrize("name, content, fmt, message", [
    ("broken.onnx", b"\x08\x07garbage that is not protobuf" * 10, "onnx", "not a valid ONNX model"),
    ("broken.keras", b"PK\x03\x04 truncated zip", "keras", "Keras cannot load this model"),
    ("weights.bin", b"\x00\x01\x02", "savedmodel", "is not a TF SavedModel"),
    ("model.keras", b"PK\x03\x04 whatever", "onnx", "model.format is 'onnx' but model.keras is a keras model"),
])
def test_bad_model_files_are_user_errors(tmp_path: Path, name: str, content: bytes, fmt: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(errors.ModelFormatError, match=message) as e:
        run(make_request(str(path), fmt, tmp_path / "e"), tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR


def test_corrupt_savedmodel(tmp_path: Path) -> None:
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"not a protobuf at all")
    with pytest.raises(errors.ModelFormatError, match="TensorFlow cannot load this SavedModel"):
        run(make_request(str(folder), "savedmodel", tmp_path / "e"), tmp_path)


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="no such file or folder.*mounted") as e:
        run(make_request(str(tmp_path / "nope"), "onnx", tmp_path / "e"), tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR


def test_tensorrt_backend_without_tensorrt_says_what_to_do(onnx_fixed_batch: Path, tmp_path: Path) -> None:
    """Here `import tensorrt` finds only tensorrt-stubs (a namespace package): not mistaken for TensorRT."""
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "e", target="9.0", backend="tensorrt")
    with pytest.raises(errors.MissingDependencyError, match="(stubs|not installed).*converter image") as e:
        run(request, tmp_path)
    assert e.value.exit_code == errors.EXIT_USER_ERROR and e.value.stage == "check"


def test_tf_trt_method_needs_tensorflow_with_tensorrt(keras_single: Path, tmp_path: Path) -> None:
    request = make_request(str(keras_single), "keras", tmp_path / "e", target="9.0", backend="tensorrt",
                           method="tf-trt")
    with pytest.raises(errors.MissingDependencyError, match="needs TensorFlow built with TensorRT.*was not.*Use method 'onnx'"):
        run(request, tmp_path)


def test_io_of_the_record_matches_what_onnxruntime_sees(keras_multi: Path, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    request = make_request(str(keras_multi), "keras", store)
    outcome = run(request, tmp_path)
    session = ort.InferenceSession(str(published(store, request.key)[1] / "model.onnx"), providers=["CPUExecutionProvider"])
    assert outcome.record.inputs == tuple(
        TensorSpec(i.name, "float32", (-1, i.shape[1])) for i in session.get_inputs())
