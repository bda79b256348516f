"""Finding the model in what was fetched, and refusing a format that is not the one requested."""
from __future__ import annotations

from pathlib import Path

import pytest

from trtop.convert.errors import ModelFormatError
from trtop.convert.formats import detect_format, locate_model


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_detects_each_format(tmp_path: Path) -> None:
    assert detect_format(touch(tmp_path / "sm" / "saved_model.pb").parent) == "savedmodel"
    assert detect_format(touch(tmp_path / "m.onnx")) == "onnx"
    assert detect_format(touch(tmp_path / "m.keras", b"PK\x03\x04...")) == "keras"
    assert detect_format(touch(tmp_path / "m.h5")) == "keras"
    assert detect_format(touch(tmp_path / "weights", b"\x89HDF\r\n\x1a\n rest")) == "keras"  # by magic number
    assert detect_format(touch(tmp_path / "notes.txt", b"hello")) is None
    assert detect_format(tmp_path / "sm" / "..") is None  # a folder without saved_model.pb


def test_a_folder_with_one_model_is_that_model(tmp_path: Path) -> None:
    touch(tmp_path / "README.md")
    model = touch(tmp_path / "model.onnx")
    assert locate_model(tmp_path, "onnx") == model


def test_a_folder_with_several_models_is_ambiguous(tmp_path: Path) -> None:
    touch(tmp_path / "a.onnx")
    touch(tmp_path / "b.keras")
    with pytest.raises(ModelFormatError, match=r"several models \(a.onnx, b.keras\)"):
        locate_model(tmp_path, "onnx")


def test_format_mismatch_names_both(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="model.format is 'savedmodel' but m.onnx is a onnx model"):
        locate_model(touch(tmp_path / "m.onnx"), "savedmodel")


def test_onnx_without_suffix_is_left_to_the_onnx_loader(tmp_path: Path) -> None:
    path = touch(tmp_path / "model")
    assert locate_model(path, "onnx") == path
    with pytest.raises(ModelFormatError, match="is not a TF SavedModel .* Keras .* ONNX"):
        locate_model(path, "keras")
