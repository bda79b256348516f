"""OCI archives of one layer: what containerd imports as the pause and base images."""
from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

from trtop_dev.devcluster import ociarchive


def _read(archive: Path) -> tuple[dict, dict, dict, bytes]:
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> bytes:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
            assert member is not None
            return member.read()
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
    return index, manifest, config, layer


def test_single_file_image_holds_the_binary_and_names_itself(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF pretend")
    dest = tmp_path / "pause.oci.tar"
    digest = ociarchive.write_single_file_archive(binary, "localhost/trtop/pause:v1.36.3", dest,
                                                  entrypoint=["/pause"], user="65535:65535", env={})
    index, manifest, config, layer = _read(dest)
    entry = index["manifests"][0]
    assert entry["digest"] == digest
    assert entry["annotations"] == {"io.containerd.image.name": "localhost/trtop/pause:v1.36.3",
                                    "org.opencontainers.image.ref.name": "v1.36.3"}
    raw = gzip.decompress(layer)
    # The config names the layer by its uncompressed digest, the manifest by the compressed one.
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    assert manifest["layers"][0]["digest"] == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert config["config"] == {"Env": [], "Entrypoint": ["/pause"], "User": "65535:65535"}
    with tarfile.open(fileobj=__import__("io").BytesIO(raw)) as tar:
        member = tar.getmember("pause")
        assert member.mode == 0o755 and tar.extractfile(member).read() == b"\x7fELF pretend"  # type: ignore[union-attr]


def test_the_same_rootfs_gives_the_same_digest(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"x")
    first = ociarchive.write_single_file_archive(binary, "a/b:1", tmp_path / "1.tar")
    second = ociarchive.write_single_file_archive(binary, "a/b:1", tmp_path / "2.tar")
    assert first == second


def test_index_without_a_tag_says_latest() -> None:
    index = ociarchive.build_index(ociarchive.Blob("sha256:ab", 2), "localhost:5000/trtop/base")
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
