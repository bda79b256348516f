"""Which kind of model a fetched path holds: TF SavedModel, Keras (.keras / .h5) or ONNX.

``locate_model`` finds the model inside what was fetched (a PVC folder often holds one
model file among others) and checks it against the format the request names: a
mismatch is a user error, never a guess. Pure file inspection; called by ``pipeline.py``.
"""
from __future__ import annotations

from pathlib import Path

from trtop.api.engine import ModelFormat
from trtop.convert.errors import ModelFormatError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_KNOWN = "a TF SavedModel (a folder with saved_model.pb), a Keras model (.keras / .h5) or an ONNX model (.onnx)"


def detect_format(path: Path) -> ModelFormat | None:
    """The format of exactly this path, or None when it is none of the three."""
    if path.is_dir():
        return "savedmodel" if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file() else None
    suffix = path.suffix.lower()
    head = _head(path)
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".keras", ".h5", ".hdf5") or head.startswith(_HDF5_MAGIC):
        return "keras"
    if head.startswith(_ZIP_MAGIC) and path.stat().st_size > 0:
        return "keras"  # a .keras file is a zip (config.json + weights); no other format here is
    return None


def locate_model(path: Path, requested: ModelFormat) -> Path:
    """The model file or folder under ``path`` of format ``requested`` (ModelFormatError otherwise)."""
    found = detect_format(path)
    if found is None and path.is_dir():
        candidates = [p for p in sorted(path.iterdir()) if not p.name.startswith(".") and detect_format(p)]
        if len(candidates) == 1:
            return locate_model(candidates[0], requested)
        if len(candidates) > 1:
            listed = ", ".join(p.name for p in candidates)
            raise ModelFormatError(f"{path} holds several models ({listed}): point model.uri at one of them")
    if found is None and path.is_file() and requested == "onnx":
        return path  # ONNX has no magic number: let the ONNX loader decide (a corrupt file fails there)
    if found is None:
        raise ModelFormatError(f"{path} is not {_KNOWN}")
    if found != requested:
        raise ModelFormatError(f"model.format is {requested!r} but {path.name} is a {found} model: fix model.format")
    return path


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError:
        return b""
