"""One-layer OCI image archives from a root filesystem tar, for ``ctr images import``.

No registry is reachable for the images the dev cluster runs: the pause image (the
Kubernetes module's own ``pause.c``, built by hack/build-tools.sh) and the Debian base of
the project's images (made by mmdebstrap) are wrapped here as OCI image layouts and
imported into the node's containerd. The descriptors are built by pure functions; only
``write_archive`` touches files. Called by ``trtop_dev.devcluster.images`` and
``trtop_dev.devcluster.realnode``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int

    @staticmethod
    def of(data: bytes) -> Blob:
        return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def build_config(diff_id: str, *, entrypoint: Sequence[str] = (), cmd: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, user: str = "", created_by: str = "trtop") -> dict[str, Any]:
    """The image config: one layer whose uncompressed digest is ``diff_id``."""
    config: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in ({"PATH": DEFAULT_PATH} if env is None else env).items()]}
    if entrypoint:
        config["Entrypoint"] = list(entrypoint)
    if cmd:
        config["Cmd"] = list(cmd)
    if user:
        config["User"] = user
    return {
        "architecture": "amd64",
        "os": "linux",
        # A fixed date: the same layer gives the same image digest on every machine.
        "created": "2026-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": created_by}],
    }


def build_manifest(config: Blob, layer: Blob) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size}],
    }


def build_index(manifest: Blob, name: str) -> dict[str, Any]:
    """index.json naming the image ``name`` (registry/repo:tag) for containerd and for OCI tools."""
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST, "digest": manifest.digest, "size": manifest.size,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    }


def single_file_layer(path: Path, name: str, mode: int = 0o755) -> bytes:
    """An uncompressed layer tar holding one file at ``/name`` (the pause image)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        data = path.read_bytes()
        info.size, info.mode, info.mtime = len(data), mode, 0
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_archive(rootfs_tar: Path, name: str, dest: Path, **config: Any) -> str:
    """Write an OCI archive of image ``name`` with ``rootfs_tar`` as its one layer; return its manifest digest."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        blobs = Path(tmp) / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        diff = hashlib.sha256()
        staged = blobs / "layer.tmp"
        # mtime=0: the same rootfs gives the same compressed bytes, hence the same digest.
        with rootfs_tar.open("rb") as src, gzip.GzipFile(staged, "wb", compresslevel=6, mtime=0) as gz:
            while chunk := src.read(1 << 20):
                diff.update(chunk)
                gz.write(chunk)
        layer = Blob("sha256:" + _sha256_file(staged), staged.stat().st_size)
        staged.rename(blobs / layer.digest.split(":")[1])
        config_blob = _put(blobs, build_config("sha256:" + diff.hexdigest(), **config))
        manifest_blob = _put(blobs, build_manifest(config_blob, layer))
        (Path(tmp) / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (Path(tmp) / "index.json").write_text(json.dumps(build_index(manifest_blob, name)))
        partial = dest.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            for entry in ("oci-layout", "index.json", "blobs"):
                tar.add(Path(tmp) / entry, arcname=entry)
        partial.rename(dest)
    return manifest_blob.digest


def write_single_file_archive(binary: Path, name: str, dest: Path, **config: Any) -> str:
    """An image holding only ``/<binary name>`` (the pause image)."""
    with tempfile.NamedTemporaryFile(dir=dest.parent, suffix=".tar") as layer:
        layer.write(single_file_layer(binary, binary.name))
        layer.flush()
        return write_archive(Path(layer.name), name, dest, **config)


def _put(blobs: Path, document: dict[str, Any]) -> Blob:
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    blob = Blob.of(data)
    (blobs / blob.digest.split(":")[1]).write_bytes(data)
    return blob


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
