"""Verification numbers: generated inputs, sample data, and the comparison."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtop.api.engine import TensorSpec
from trtop.convert import errors
from trtop.convert.parity import compare, generate_inputs, load_sample_inputs, resize_batch

SPECS = (TensorSpec("x", "float32", (-1, 3)), TensorSpec("ids", "int64", (-1, 2)), TensorSpec("m", "bool", (-1,)))


def test_generated_inputs_are_seeded_and_typed() -> None:
    a = generate_inputs(SPECS, 4)
    b = generate_inputs(SPECS, 4)
    assert {k: (v.shape, v.dtype.name) for k, v in a.items()} == {
        "x": ((4, 3), "float32"), "ids": ((4, 2), "int64"), "m": ((4,), "bool")}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["ids"].min() >= 0 and a["ids"].max() < 10  # safe as embedding ids
    with pytest.raises(errors.BadRequestError, match="open dimensions"):
        generate_inputs((TensorSpec("x", "float32", (-1, -1)),), 2)
    with pytest.raises(errors.BadRequestError, match="sampleDataUri"):
        generate_inputs((TensorSpec("s", "object", (-1,)),), 2)


@pytest.mark.parametrize("shape", [(-1, 100_000, 100_000, 1000), (-1, 2**40, 2**40)])
def test_inputs_too_large_to_generate_are_a_request_error(shape: tuple[int, ...]) -> None:
    """A model's declared dims are the tenant's: they used to end in MemoryError (exit 3, "give the Job more
    memory", retried) or numpy's ValueError "array is too big" (exit 1, a traceback, retried)."""
    with pytest.raises(errors.BadRequestError, match="more than the 4 GiB") as e:
        generate_inputs((TensorSpec("x", "float32", shape),), 8)
    assert e.value.exit_code == errors.EXIT_USER_ERROR


def test_compare_within_and_beyond_tolerance() -> None:
    ref = {"y": np.array([[1.0, 100.0]], np.float32)}
    ok = compare(ref, {"y": np.array([[1.00005, 100.05]], np.float32)}, atol=1e-4, rtol=1e-3)
    assert ok.passed and ok.max_abs_error == pytest.approx(0.05, rel=1e-3) and ok.batch == 1
    bad = compare(ref, {"y": np.array([[1.01, 100.0]], np.float32)}, atol=1e-4, rtol=1e-3)
    assert not bad.passed and bad.worst_output == "y"
    assert bad.as_record()["tolerance"] == 1e-4


def test_nan_matches_only_nan() -> None:
    ref = {"y": np.array([np.nan, 1.0])}
    assert compare(ref, {"y": np.array([np.nan, 1.0])}, 1e-4, 0).passed
    result = compare(ref, {"y": np.array([0.0, 1.0])}, 1e-4, 0)
    assert not result.passed and result.max_abs_error == float("inf")


def test_missing_outputs_and_shape_changes_are_reported() -> None:
    with pytest.raises(errors.ModelFormatError, match=r"lacks outputs \['z'\]"):
        compare({"z": np.zeros(2)}, {"y": np.zeros(2)}, 1e-4, 0)
    with pytest.raises(errors.ModelFormatError, match=r"shape \(3,\), the original \(2,\)"):
        compare({"y": np.zeros(2)}, {"y": np.zeros(3)}, 1e-4, 0)


def test_sample_data(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, x=np.ones((40, 3)), ids=np.ones((40, 2), np.int32), m=np.ones(40, bool))
    feeds = load_sample_inputs(path, SPECS, max_batch=32)
    assert feeds["x"].shape == (32, 3) and feeds["x"].dtype == np.float32 and feeds["ids"].dtype == np.int64
    np.savez(path, x=np.ones((4, 3)))
    with pytest.raises(errors.BadRequestError, match=r"lacks inputs \['ids', 'm'\]"):
        load_sample_inputs(path, SPECS, 32)
    np.savez(path, x=np.ones((4, 5)), ids=np.ones((4, 2)), m=np.ones(4))
    with pytest.raises(errors.BadRequestError, match=r"'x' has shape \(4, 5\)"):
        load_sample_inputs(path, SPECS, 32)
    path.write_bytes(b"not npz")
    with pytest.raises(errors.ModelFormatError, match="not a readable .npz"):
        load_sample_inputs(path, SPECS, 32)


def test_resize_batch_repeats_the_rows_in_turn() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    resized = resize_batch({"x": x}, 7)["x"]
    assert resized.shape == (7, 2) and resized[3:6].tolist() == x.tolist() and resized[6].tolist() == x[0].tolist()
    assert resize_batch({"x": x}, 2)["x"].tolist() == x[:2].tolist()
