"""Checking an artifact's bytes against its record always comes back: a FIFO swapped in after the listing is
refused at once, and a file longer than its record (one that never ends) is read only one byte past the size."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.store.conftest import make_record
from tests.waiting import call_within
from trtop.store.integrity import IntegrityError, artifact_digest, verify_artifact

KEY = "e-" + "a" * 16


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_a_fifo_swapped_in_after_the_listing_is_refused_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    artifact = tmp_path / "model.onnx" if layout == "file" else tmp_path / "saved_model"
    target = artifact if layout == "file" else artifact / "variables.data"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"onnx-bytes")
    real_lstat = os.lstat

    def lstat_then_swap(path: object, *args: object, **kwargs: object) -> os.stat_result:
        """A build pod's swap right after the check: the name is a FIFO by the time it is opened."""
        found = real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        if Path(str(path)) == target and target.is_file():
            target.unlink()
            os.mkfifo(target)
        return found
    monkeypatch.setattr(os, "lstat", lstat_then_swap)
    try:
        error, _ = call_within(5, lambda: artifact_digest(artifact))  # the old code waited for a writer for good
    finally:
        monkeypatch.undo()
        if target.exists():  # a reader stuck on the FIFO (the defect) gets its end of file
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    assert isinstance(error, IntegrityError) and "not a regular file" in str(error), repr(error)


def test_an_artifact_longer_than_its_record_is_read_only_one_byte_past_its_size(tmp_path: Path) -> None:
    record = make_record(KEY)  # pins the 10 bytes b"onnx-bytes"
    with open(tmp_path / record.artifact, "wb") as f:
        f.write(b"onnx-bytes")
        f.truncate(64 << 30)  # 64 GiB (sparse): as a file a writer never stops growing, minutes to hash
    error, elapsed = call_within(10, lambda: verify_artifact(tmp_path, record))
    assert isinstance(error, IntegrityError), repr(error)
    assert f"has more than {record.size} bytes, but its record pins" in str(error)
    assert elapsed < 2


def test_an_artifact_of_its_record_size_still_matches(tmp_path: Path) -> None:
    record = make_record(KEY)
    (tmp_path / record.artifact).write_bytes(b"onnx-bytes")
    assert verify_artifact(tmp_path, record) == tmp_path / record.artifact
    assert artifact_digest(tmp_path / record.artifact) == (record.sha256, record.size)


def test_a_folder_digest_takes_any_file_name_and_keeps_its_value_for_utf8_names(tmp_path: Path) -> None:
    """A build pod writes the engine folder: a name that is not UTF-8 is digested (it raised UnicodeEncodeError, an
    internal failure in the converter, the stores and the server), and a UTF-8 one gives the listing's sha256 as the
    module doc defines it (the digests records already pin)."""
    import hashlib
    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "données.data").write_bytes(b"weights")
    (folder / "saved_model.pb").write_bytes(b"graph")
    listing = b"".join(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode() for rel, data in
                       [("saved_model.pb", b"graph"), ("variables/données.data", b"weights")])
    assert artifact_digest(folder) == (hashlib.sha256(listing).hexdigest(), 12)
    latin1 = os.fsdecode("variables/caf\xe9.bin".encode("latin-1"))
    (folder / latin1).write_bytes(b"x")
    digest, size = artifact_digest(folder)
    assert size == 13 and digest != hashlib.sha256(listing).hexdigest()
