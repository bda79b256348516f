"""Verification: the same inputs through the original model and the built artifact, and how far apart they are.

Inputs are the user's sample data (an ``.npz`` with one array per model input) when the
request names one, otherwise generated from the input specs with a fixed seed, so a
rebuild sees the same numbers (at most ``MAX_GENERATED_BYTES`` per input: the dims are
the model's, so a larger one is a request error, not an out-of-memory retry). The artifact passes when every output element satisfies
``|built - original| <= atol + rtol * |original|`` (per-precision defaults in
``precision.TOLERANCES``; ``builder_options`` ``verify_atol`` / ``verify_rtol`` override).
Pure numpy; called by ``pipeline.py``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.convert.errors import BadRequestError, ModelFormatError

log = logging.getLogger(__name__)

SEED = 20240607
MAX_GENERATED_BYTES = 4 << 30  # one generated input; a real one is megabytes (an 8x3x1024x1024 image batch: 100 MiB)


@dataclass(frozen=True)
class Parity:
    max_abs_error: float
    max_rel_error: float
    atol: float
    rtol: float
    batch: int
    worst_output: str
    passed: bool

    def as_record(self) -> dict[str, float]:
        """The ``parity`` field of engine.json (numbers only: the operator copies it into status)."""
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "tolerance": self.atol, "rtol": self.rtol, "batch": float(self.batch)}


def generate_inputs(specs: Sequence[TensorSpec], batch: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Seeded inputs of the given batch: normal floats, small non-negative integers (safe as ids), booleans."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (batch, *spec.shape[1:])
        if any(d <= 0 for d in shape):
            raise BadRequestError(f"input {spec.name!r} has open dimensions {spec.shape}: set model.input_shapes")
        dtype = np.dtype(spec.dtype)
        size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if size > MAX_GENERATED_BYTES:
            raise BadRequestError(
                f"input {spec.name!r} of shape {list(spec.shape)} needs {size / 2**30:.3g} GiB at batch {batch}, more "
                f"than the {MAX_GENERATED_BYTES >> 30} GiB the converter generates per input: check the model's "
                "declared dims and model.input_shapes"
            )
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise BadRequestError(
                f"input {spec.name!r} has dtype {spec.dtype}, for which no inputs can be generated: "
                "give engine.sampleDataUri (an .npz with one array per input)"
            )
    return feeds


def load_sample_inputs(path: Path, specs: Sequence[TensorSpec], max_batch: int) -> dict[str, np.ndarray]:
    """The user's sample data for every input, cut to the profile's max batch and cast to the input dtypes."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except Exception as e:
        raise ModelFormatError(f"sample data {path.name} is not a readable .npz file: {e}") from e
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise BadRequestError(f"sample data {path.name} lacks inputs {missing}; it has {sorted(arrays)}")
    feeds = {}
    for spec in specs:
        array = arrays[spec.name]
        if array.ndim != len(spec.shape) or any(d > 0 and d != a for d, a in zip(spec.shape[1:], array.shape[1:])):
            raise BadRequestError(f"sample data {spec.name!r} has shape {array.shape}, the input is {spec.shape}")
        if array.shape[0] > max_batch:
            log.info("sample data has batch %d; verifying on the first %d (the profile's max)", array.shape[0], max_batch)
            array = array[:max_batch]
        feeds[spec.name] = array.astype(np.dtype(spec.dtype), copy=False)
    batches = {a.shape[0] for a in feeds.values()}
    if len(batches) != 1:
        raise BadRequestError(f"sample data arrays disagree on the batch size: {sorted(batches)}")
    return feeds


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            atol: float, rtol: float) -> Parity:
    """Largest absolute and relative differences over all outputs, and whether all are within tolerance."""
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise ModelFormatError(f"the built artifact lacks outputs {missing} of the original (it has {sorted(candidate)})")
    worst_abs, worst_rel, worst, passed, batch = 0.0, 0.0, "", True, 0
    for name, ref in reference.items():
        ref = np.asarray(ref)
        got = np.asarray(candidate[name])
        batch = int(ref.shape[0]) if ref.ndim else 1
        if ref.shape != got.shape:
            raise ModelFormatError(f"output {name!r}: the artifact gives shape {got.shape}, the original {ref.shape}")
        r = ref.astype(np.float64)
        g = got.astype(np.float64)
        both_nan = np.isnan(r) & np.isnan(g)
        diff = np.where(both_nan, 0.0, np.abs(g - r))
        diff = np.where(np.isnan(diff), np.inf, diff)
        if diff.size:
            abs_err = float(diff.max())
            rel_err = float((diff / np.maximum(np.abs(r), max(atol, 1e-12))).max())
            passed = passed and bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(r))))
            if abs_err >= worst_abs:
                worst_abs, worst = abs_err, name
            worst_rel = max(worst_rel, rel_err)
    return Parity(worst_abs, worst_rel, atol, rtol, batch, worst, passed)


def resize_batch(feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The inputs' rows repeated in turn (or cut) to ``batch`` rows."""
    return {name: np.take(a, np.arange(batch) % a.shape[0], axis=0) for name, a in feeds.items()}


def worst(a: Parity, b: Parity) -> Parity:
    """Two checks (e.g. two batch sizes) as one: the larger errors, passed only if both passed."""
    big = a if a.max_abs_error >= b.max_abs_error else b
    return Parity(big.max_abs_error, max(a.max_rel_error, b.max_rel_error), big.atol, big.rtol, big.batch,
                  big.worst_output, a.passed and b.passed)
