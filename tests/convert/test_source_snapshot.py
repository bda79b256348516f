"""Local models (a PVC, possibly ReadWriteMany and written by others) are snapshotted, never used in place.

The digest checked against ``model.digest`` must be that of exactly the bytes the build
converts: a writer that changes the volume after the check (or during the copy) must not
reach the conversion, and the copy must read nothing the fetch policy refuses, even when a
file is swapped for a link or a FIFO after it was listed, or grows past the byte cap.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trtop.api.fetch import FetchPolicy
from trtop.convert import cli, errors, guard, source
from trtop.convert.source import digest_of, fetch, fetch_model

PINNED_BYTES = b"the pinned model " * 700  # ~12 KB: several chunks at the tests' CHUNK
EVIL_BYTES = b"a swapped-in model" * 700


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """The model mount (the policy's only file root) with one claim folder in it."""
    root = tmp_path / "mnt" / "models"
    (root / "claim").mkdir(parents=True)
    return root


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "CHUNK", 4096)


def policy_for(models: Path, **changes: Any) -> FetchPolicy:
    return FetchPolicy(file_roots=(str(models),), **changes)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_model_folder(root: Path) -> Path:
    """A SavedModel-like tree with names whose order differs between string and path order."""
    (root / "variables").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(PINNED_BYTES)
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights" * 3000)
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "a" / "b" / "deep").write_bytes(b"deep")
    (root / "a-c").write_bytes(b"dash")  # "a-c" < "a/b" as strings, "a/b" first in path order
    (root / "a.b").write_bytes(b"dot")
    (root / ".hidden").write_bytes(b"hidden")
    (root / "with space é").write_bytes(b"unicode")
    (root / "empty").write_bytes(b"")
    (root / "assets").mkdir()  # an empty folder: no line in the listing
    return root


def old_digest_of(path: Path) -> str:
    """``digest_of`` as it was before snapshots (a copy): pins made with it must keep matching."""
    def sha256_file(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    if path.is_file():
        return "sha256:" + sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def hook_hashing(monkeypatch: pytest.MonkeyPatch, after_first_update: Callable[[], object]) -> None:
    """Run ``after_first_update`` once, right after the first chunk of any file was hashed (mid-read)."""
    calls = {"n": 0}

    class Hasher:
        def __init__(self) -> None:
            self.h = hashlib.sha256()

        def update(self, data: Any) -> None:
            self.h.update(data)
            calls["n"] += 1
            if calls["n"] == 1:
                after_first_update()

        def hexdigest(self) -> str:
            return self.h.hexdigest()

    class Hashlib:
        @staticmethod
        def sha256() -> Hasher:
            return Hasher()

    monkeypatch.setattr(source, "hashlib", Hashlib)


# --- (a) the bytes converted are the bytes pinned ----------------------------------------------------
@pytest.mark.parametrize("shape", ["file", "folder"])
def test_bytes_swapped_after_the_digest_never_reach_the_build(models: Path, tmp_path: Path, shape: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The time-of-check/time-of-use gap: the pipeline converted the mounted path after the digest was
    checked, so a writer swapping the bytes in between got its model built under the pinned digest."""
    if shape == "file":
        model = models / "claim" / "m.onnx"
        model.write_bytes(PINNED_BYTES)
        swapped = model
    else:
        model = make_model_folder(models / "claim" / "saved_model")
        swapped = model / "saved_model.pb"
    pinned = digest_of(model)
    original = files_of(model) if shape == "folder" else {}
    check = source.check_digest

    def check_then_swap(actual: str, expected: str | None, uri: str) -> None:
        check(actual, expected, uri)
        swapped.write_bytes(EVIL_BYTES)  # a tenant's tooling rewrites the model on the shared volume

    monkeypatch.setattr(source, "check_digest", check_then_swap)
    local, digest = fetch_model(f"file://{model}", tmp_path / "work", policy_for(models), pinned)
    assert swapped.read_bytes() == EVIL_BYTES  # the swap did happen, on the volume
    assert digest == pinned
    if shape == "file":
        assert local.read_bytes() == PINNED_BYTES, "the build must get the pinned bytes"
    else:
        assert files_of(local) == original and digest_of(local) == pinned, "the build must get the pinned bytes"
    assert not local.resolve().is_relative_to(models.resolve()), "the build must not read the mounted source"
    assert local.resolve().is_relative_to((tmp_path / "work").resolve())


def test_a_writer_during_the_copy_changes_the_digest_not_only_the_bytes(models: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that change while they are read: the digest is of what was copied, so a pin refuses the mix,
    and without a pin the record's digest is still that of the converted bytes."""
    model = models / "claim" / "m.onnx"
    model.write_bytes(PINNED_BYTES)
    hook_hashing(monkeypatch, lambda: model.write_bytes(EVIL_BYTES))
    local, digest = fetch_model(str(model), tmp_path / "work", policy_for(models), None)
    assert digest == sha(local.read_bytes()), "the digest recorded must be that of the bytes converted"
    assert local != model
    model.write_bytes(PINNED_BYTES)
    hook_hashing(monkeypatch, lambda: model.write_bytes(EVIL_BYTES))
    with pytest.raises(errors.DigestMismatchError):
        fetch_model(str(model), tmp_path / "work2", policy_for(models), sha(PINNED_BYTES))


# --- (b) digests stay what they were -------------------------------------------------------------------
def test_folder_snapshots_keep_the_digest_format(models: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_model_folder(models / "claim" / "saved_model")
    (folder / "alias.pb").symlink_to("saved_model.pb")  # a link inside: hashed (and copied) as its target
    (folder / "variables" / "up").symlink_to("../a/b/deep")
    (folder / "dangling").symlink_to("nowhere")  # left out, as digest_of always did
    (folder / "through-a-file").symlink_to("saved_model.pb/x")  # dangling too (ENOTDIR)
    before = old_digest_of(folder)
    assert cli.main(["--print-digest", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == before
    local, digest = fetch_model(f"file://{urllib.parse.quote(str(folder))}", tmp_path / "work",
                                policy_for(models), before)
    assert digest == before == digest_of(local) == old_digest_of(local)
    assert local.name == "saved_model" and local.resolve() != folder.resolve()
    assert files_of(local) == files_of(folder)  # links became files with their targets' bytes
    assert not any(p.is_symlink() for p in local.rglob("*"))
    assert (local / "assets").is_dir()


def test_single_files_keep_their_name_and_sha256sum(models: Path, tmp_path: Path) -> None:
    model = models / "claim" / "resnet.onnx"
    model.write_bytes(PINNED_BYTES)
    (models / "claim" / "current").symlink_to("resnet.onnx")
    local, digest = fetch_model(str(models / "claim" / "current"), tmp_path / "work", policy_for(models),
                                sha(PINNED_BYTES))
    assert digest == sha(PINNED_BYTES) == old_digest_of(model)
    assert local.name == "current" and not local.is_symlink() and local.read_bytes() == PINNED_BYTES


def test_a_local_archive_is_pinned_by_its_bytes_and_unpacked_from_the_snapshot(models: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(make_model_folder(tmp_path / "tree"), arcname="saved_model")
    archive = models / "claim" / "model.tar.gz"
    archive.write_bytes(buf.getvalue())
    pinned = sha(buf.getvalue())
    with pytest.raises(errors.DigestMismatchError):
        fetch_model(str(archive), tmp_path / "bad", policy_for(models), "sha256:" + "0" * 64)
    assert not list((tmp_path / "bad").rglob("unpacked"))  # never opened
    local, digest = fetch_model(str(archive), tmp_path / "ok", policy_for(models), pinned)
    assert digest == pinned
    assert local.name == "saved_model" and (local / "saved_model.pb").read_bytes() == PINNED_BYTES
    assert local.resolve().is_relative_to((tmp_path / "ok").resolve())


def test_sample_data_is_snapshotted_too(models: Path, tmp_path: Path) -> None:
    samples = models / "claim" / "samples.npz"
    samples.write_bytes(b"npz bytes")
    local = fetch(f"file://{samples}", tmp_path / "work" / "sample", policy_for(models))
    assert local.read_bytes() == b"npz bytes" and local.name == "samples.npz"
    assert local.resolve().is_relative_to((tmp_path / "work" / "sample").resolve())


# --- (c) caps and the deadline -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["file", "folder"])
def test_a_file_that_grows_past_the_cap_while_it_is_copied_is_refused(models: Path, tmp_path: Path, shape: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the cap when it was checked, over it once the copy reads on: a writer appending for ever
    must neither fill the work folder nor get its bytes built."""
    if shape == "file":
        model = growing = models / "claim" / "m.onnx"
        growing.write_bytes(PINNED_BYTES)
    else:
        model = make_model_folder(models / "claim" / "saved_model")
        growing = model / "variables" / "variables.data-00000-of-00001"
    cap = sum(len(b) for b in files_of(model).values()) if shape == "folder" else len(PINNED_BYTES)
    cap += 100

    def grow() -> None:
        with open(growing, "ab") as f:
            f.write(b"x" * 50_000)

    hook_hashing(monkeypatch, grow)
    work = tmp_path / "work"
    with pytest.raises(errors.TooLargeError, match=r"fetch\.maxBytes.*grew while it was copied") as e:
        fetch_model(str(model), work, policy_for(models, max_bytes=cap), None)
    assert e.value.exit_code == errors.EXIT_USER_ERROR
    assert list((work / "source").iterdir()) == []  # nothing half-copied is left behind


def test_a_model_over_the_cap_is_refused_before_anything_is_copied(models: Path, tmp_path: Path) -> None:
    folder = make_model_folder(models / "claim" / "saved_model")
    total = sum(len(b) for b in files_of(folder).values())
    with pytest.raises(errors.TooLargeError, match=rf"{total} bytes, more than the {total - 1} .*fetch\.maxBytes"):
        fetch_model(str(folder), tmp_path / "work", policy_for(models, max_bytes=total - 1), None)
    assert not (tmp_path / "work").exists()
    with pytest.raises(errors.TooLargeError, match=r"more than 3 files and folders \(fetch\.maxFiles\)"):
        fetch_model(str(folder), tmp_path / "work", policy_for(models, max_files=3), None)


def test_a_local_copy_has_the_fetch_deadline(models: Path, tmp_path: Path) -> None:
    make_model_folder(models / "claim" / "saved_model")
    with pytest.raises(errors.NetworkError, match="not fetched within") as e:
        fetch_model(str(models / "claim" / "saved_model"), tmp_path / "work", policy_for(models, deadline_seconds=0),
                    None)
    assert e.value.exit_code == errors.EXIT_INFRA_ERROR


# --- (d) links and FIFOs swapped in after the listing -------------------------------------------------
@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """Something outside the mount the build pod could read (its service account token, say)."""
    (tmp_path / "outside").mkdir()
    path = tmp_path / "outside" / "token"
    path.write_bytes(b"SECRET TOKEN")
    return path


def swap_for_link(path: Path, target: Path) -> None:
    if path.is_dir():
        path.rename(path.with_name(path.name + ".old"))
    else:
        path.unlink()
    path.symlink_to(target)


def no_secret_under(work: Path) -> bool:
    return all(b"SECRET" not in p.read_bytes() for p in work.rglob("*") if p.is_file()) if work.exists() else True


def test_a_link_swapped_in_after_the_policy_check_is_not_followed_out_of_the_mount(
        models: Path, tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_local_path lists the folder and finds no link leaving the mount; a writer then swaps a
    weights file for a link to the pod's secrets. Read in place, the build followed it."""
    folder = make_model_folder(models / "claim" / "saved_model")
    check = guard.check_local_path

    def check_then_swap(uri: str, path: Path, policy: FetchPolicy) -> Path:
        resolved = check(uri, path, policy)
        swap_for_link(folder / "variables" / "variables.index", secret)
        return resolved

    monkeypatch.setattr(source, "check_local_path", check_then_swap)
    with pytest.raises(errors.FetchRefusedError, match="variables/variables.index links outside") as e:
        fetch_model(str(folder), tmp_path / "work", policy_for(models), None)
    assert e.value.exit_code == errors.EXIT_USER_ERROR
    assert no_secret_under(tmp_path / "work")


@pytest.mark.timeout(60)  # a reader that blocks on the FIFO would hang: fail instead
@pytest.mark.parametrize("swapped, kind, refusal", [
    ("variables/variables.index", "link", "variables/variables.index turned into a link or a special file"),
    ("variables", "link", "variables turned into a link or a special file"),
    ("variables/variables.index", "fifo", "variables/variables.index is not a regular file or folder"),
    ("variables/variables.index", "folder", "variables/variables.index is not a regular file or folder"),
])
def test_an_entry_swapped_between_the_copys_listing_and_its_open_is_refused(
        models: Path, tmp_path: Path, secret: Path, swapped: str, kind: str, refusal: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The narrowest gap: the entry was a regular file (or folder) when the snapshot listed it, and is a
    link (or a FIFO) when it is opened; O_NOFOLLOW makes that open fail instead of following the link,
    O_NONBLOCK and fstat of the opened descriptor refuse the FIFO without waiting for a writer."""
    folder = make_model_folder(models / "claim" / "saved_model")
    listdir = getattr(source, "_listdir", None)
    done: list[bool] = []

    def list_then_swap(dir_fd: int) -> Any:
        entries = listdir(dir_fd)  # type: ignore[misc]
        if not done and swapped.split("/")[-1] in {name for name, _ in entries}:
            done.append(True)
            path = folder / swapped
            if kind == "fifo":
                path.unlink()
                os.mkfifo(path)
            elif kind == "folder":
                path.unlink()
                path.mkdir()
            else:
                swap_for_link(path, secret if path.is_file() else secret.parent)
        return entries

    monkeypatch.setattr(source, "_listdir", list_then_swap, raising=False)
    with pytest.raises(errors.FetchRefusedError, match=refusal):
        fetch_model(str(folder), tmp_path / "work", policy_for(models), None)
    assert done and no_secret_under(tmp_path / "work")


@pytest.mark.timeout(60)
def test_a_fifo_swapped_in_after_the_policy_check_is_refused(models: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """check_local_path refuses FIFOs, but one can replace a file right after it looked."""
    folder = make_model_folder(models / "claim" / "saved_model")
    fifo = folder / "variables" / "variables.index"
    check = guard.check_local_path

    def check_then_swap(uri: str, path: Path, policy: FetchPolicy) -> Path:
        resolved = check(uri, path, policy)
        fifo.unlink()
        os.mkfifo(fifo)
        return resolved

    monkeypatch.setattr(source, "check_local_path", check_then_swap)
    with pytest.raises(errors.FetchRefusedError, match="variables.index is not a regular file"):
        fetch_model(str(folder), tmp_path / "work", policy_for(models), None)


def test_links_inside_the_mount_to_folders_are_refused_with_a_way_out(models: Path, tmp_path: Path) -> None:
    """digest_of never looked into a linked folder, so its files were never pinned: copying them would
    change existing pins, leaving them out would build a model without them."""
    shared = models / "claim" / "shared-variables"
    shared.mkdir()
    (shared / "variables.index").write_bytes(b"index")
    folder = models / "claim" / "saved_model"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"pb")
    (folder / "variables").symlink_to(shared)
    with pytest.raises(errors.FetchRefusedError, match="variables is a link to a folder.*put the folder itself"):
        fetch_model(str(folder), tmp_path / "work", policy_for(models), None)


def test_a_work_folder_inside_the_model_folder_is_refused(tmp_path: Path) -> None:
    """Run by hand with --workdir inside the model folder: the copy would copy itself."""
    make_model_folder(tmp_path / "model")
    with pytest.raises(errors.BadRequestError, match="work folder .* lies inside the model folder"):
        fetch_model(str(tmp_path / "model"), tmp_path / "model" / "work", FetchPolicy(file_roots=("/",)), None)


def test_a_name_that_is_not_utf8_is_digested_by_its_bytes(models: Path, tmp_path: Path) -> None:
    """A Latin-1 file name (from an old archive tool, or a tenant's) raised UnicodeEncodeError in the digest: an
    internal failure, retried. Names are digested as their bytes, the same as UTF-8 for every name that is."""
    folder = models / "claim" / "model"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(PINNED_BYTES)
    (folder / "caf\u00e9.txt").write_bytes(b"utf-8 name")
    utf8_only = digest_of(folder)
    assert utf8_only == old_digest_of(folder)  # unchanged for UTF-8 names: existing pins still match
    with open(os.path.join(os.fsencode(folder), b"r\xe9sum\xe9.txt"), "wb") as f:  # Latin-1 bytes
        f.write(b"latin-1 name")
    expected = digest_of(folder)
    assert expected != utf8_only
    local, digest = fetch_model(str(folder), tmp_path / "work", policy_for(models), expected)
    assert digest == expected == digest_of(local)
    assert (local / os.fsdecode(b"r\xe9sum\xe9.txt")).read_bytes() == b"latin-1 name"
