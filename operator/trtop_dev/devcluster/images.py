"""Builds the project's CPU images without Docker, straight into the real node's containerd.

The images' Dockerfiles (``images/*/Dockerfile*``) are built unchanged by BuildKit
(buildkitd with its containerd worker in the CRI's ``k8s.io`` namespace, so the kubelet
sees every image at once) on a Debian base made here by mmdebstrap, since no registry is
reachable. The base is cached by the Debian point release; the images are tagged with
``trtop.versions`` like ``make images`` does. Old tags and BuildKit's cache are pruned after
each build so the store stays small. Run by hack/build-images.sh (and ``.ci/run``).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trtop import versions
from trtop_dev.devcluster import diskspace, nodeconfig, ociarchive, workspace
from trtop_dev.devcluster.containerd import RUN_DIR, Containerd, spawn_detached, terminate
from trtop_dev.devcluster.kwok import process_running
from trtop_dev.devcluster.tools import cache_dir, ensure_node_tools, read_versions

Log = Callable[[str], None]
BASE_REPO = "localhost/trtop/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# The GPU Dockerfiles run `python3 -m pip install --target ...` with the base's own Python,
# as NVIDIA's image has pip: their mechanics-only base adds Debian's pip.
MECHANICS_PACKAGES = ("python3-pip",)
# Local CAs of this machine (an egress proxy's, a company's): pip inside the builds must
# trust them, so the base carries them (none on an ordinary machine).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
HOLDER = "build-images"
# BuildKit's cache kept after a build (MB): the images' dependency stages, ~3 GB together.
BUILD_CACHE_KEEP_MB = 4000
# Free disk a build needs: the converter's layer of TensorFlow is ~1.7 GB unpacked, held up to
# three times while it is built, exported and unpacked, beside the compressed content.
BUILD_NEEDS_BYTES = 6 * diskspace.GiB
# The server Dockerfiles' Go stage (the native HTTP front-end). No Go image can be pulled here, so the
# stage is given as a named context holding the binary built on this machine (trtop_dev.native, the
# same flags), at the path the stage would leave it: out/trtop-http.
NATIVE_STAGE = "trtop-http"


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile, the tag it gets, whether it needs NVIDIA's base (GPU)."""

    name: str
    dockerfile: str
    tag: str
    gpu: bool = False
    # A shell command run in the built image as its user, where no test runs it (the GPU mechanics): its
    # entrypoint, its extra's imports and its tools resolve from the folders and paths the Dockerfile sets.
    smoke: str = ""


CPU_IMAGES = (
    ImageSpec("server-cpu", "images/server/Dockerfile.cpu", versions.SERVER_CPU_IMAGE),
    ImageSpec("converter-cpu", "images/converter/Dockerfile.cpu", versions.CONVERTER_CPU_IMAGE),
    ImageSpec("operator", "images/operator/Dockerfile", versions.OPERATOR_IMAGE),
)
# NVIDIA's TensorRT base cannot be fetched here: these are built on Debian + pip instead, so
# every step of their Dockerfiles runs but TensorRT, CUDA and cuDNN are absent. Their tags
# say "mechanics" so nobody mistakes them for images that serve on a GPU.
GPU_MECHANICS_IMAGES = (
    ImageSpec("server", "images/server/Dockerfile", f"localhost/trtop/server-mechanics:{versions.TRTOP_VERSION}",
              gpu=True, smoke="command -v trtop && command -v trtop-http && trtop serve --help >/dev/null && python3 -c "
                              "'import trtop.serve.server, trtop.serve.grpc, trtop.gpu.nvml, onnxruntime, pynvml'"),
    ImageSpec("converter", "images/converter/Dockerfile",
              f"localhost/trtop/converter-mechanics:{versions.TRTOP_VERSION}",
              gpu=True, smoke="command -v trtop && trtop convert --help >/dev/null && python3 -c "
                              "'import trtop.convert.pipeline, tensorflow, tf2onnx, onnxruntime, pynvml'"),
)


def base_image_name(suite: str, release: str, local_cas: str, flavour: str = "") -> str:
    """``localhost/trtop/debian:bookworm-12.15`` (+ ``-pip`` for the GPU mechanics' base,
    + ``-ca<hash>`` when local CAs are baked in)."""
    return f"{BASE_REPO}:{suite}-{release}" + (f"-{flavour}" if flavour else "") + (f"-ca{local_cas}" if local_cas else "")


def release_version(release_file: str) -> str:
    """The point release (``Version:``) of a Debian ``Release`` file."""
    match = re.search(r"^Version:\s*(\S+)\s*$", release_file, re.M)
    if not match:
        raise ValueError("the Release file has no Version: line")
    return match.group(1)


def uses_native_stage(spec: ImageSpec) -> bool:
    return f" AS {NATIVE_STAGE}\n" in Path(spec.dockerfile).read_text()


def build_args(spec: ImageSpec, base: str, env: dict[str, str], native_context: Path | None = None) -> list[str]:
    """buildctl arguments for ``spec``: the builtin Dockerfile frontend, FROM resolved locally;
    ``native_context``: a folder with ``out/trtop-http`` in place of the Go stage."""
    dockerfile = Path(spec.dockerfile)
    args = [
        "build", "--frontend", "dockerfile.v0",
        "--local", "context=.", "--local", f"dockerfile={dockerfile.parent}",
        "--opt", f"filename={dockerfile.name}",
        # The `# syntax=` line would pull docker/dockerfile from Docker Hub: use the builtin one.
        "--opt", "cmdline=builtin",
        # FROM ${PYTHON_IMAGE} is our local base: never ask a registry.
        "--opt", "image-resolve-mode=local",
        "--opt", f"build-arg:{'TENSORRT_BASE_IMAGE' if spec.gpu else 'PYTHON_IMAGE'}={base}",
        "--opt", f"build-arg:TRTOP_VERSION={versions.TRTOP_VERSION}",
        *(["--opt", f"build-arg:TENSORRT_VERSION={versions.TENSORRT_VERSION}"] if spec.gpu else []),
        "--output", f"type=image,name={spec.tag},unpack=true,compression=zstd",
    ]
    if native_context is not None:
        args += ["--local", f"{NATIVE_STAGE}={native_context}", "--opt", f"context:{NATIVE_STAGE}=local:{NATIVE_STAGE}"]
    # Docker's predefined proxy ARGs: passed through when this machine uses a proxy.
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if env.get(key):
            args += ["--opt", f"build-arg:{key}={env[key]}"]
    return args


def smoke_dockerfile(spec: ImageSpec) -> str:
    """A Dockerfile that runs ``spec.smoke`` in the image ``spec`` was built as, as the image's own user."""
    return f"FROM {spec.tag}\nRUN {spec.smoke}\n"


def stale_image_refs(listing: str, keep: Sequence[str], repos: Sequence[str]) -> list[str]:
    """Image names to delete from ``ctr images ls`` output: old tags of our repos, and the CRI's
    ``sha256:`` aliases of images no kept name points to."""
    rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
    refs = {row[0]: row[2] for row in rows if len(row) >= 3}
    kept_digests = {digest for ref, digest in refs.items() if ref in keep or not _ours(ref, repos)
                    and not ref.startswith("sha256:")}
    stale = []
    for ref, digest in refs.items():
        if ref in keep:
            continue
        if _ours(ref, repos) or (ref.startswith("sha256:") and digest not in kept_digests):
            stale.append(ref)
    return sorted(stale)


def _ours(ref: str, repos: Sequence[str]) -> bool:
    return any(ref.startswith(repo + ":") or ref.startswith(repo + "@") for repo in repos)


class Builder:
    """buildkitd on the machine's containerd, for one run of hack/build-images.sh."""

    def __init__(self, root: Path, log: Log) -> None:
        self.root, self.log = root, log
        self.tools = ensure_node_tools(root, images=True)
        self.cache = cache_dir()
        self.daemon = Containerd(self.tools, self.cache)
        self.versions = read_versions(root)
        self.address = f"unix://{RUN_DIR / 'buildkit' / 'buildkitd.sock'}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.release_prefix = ""  # bases of this Debian release (either flavour) survive pruning
        self.lock: IO[str] | None = None

    def base(self, flavour: str = "") -> str:
        """The Debian base in containerd (made by mmdebstrap when this point release is new);
        flavour "pip" adds Debian's pip (the GPU mechanics' base)."""
        suite, mirror = self.versions["DEBIAN_SUITE"], self.versions["DEBIAN_MIRROR"]
        cas = sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
        ca_hash = hashlib.sha256(b"".join(p.read_bytes() for p in cas)).hexdigest()[:8] if cas else ""
        try:
            with urllib.request.urlopen(f"{mirror}/dists/{suite}/Release", timeout=30) as answer:
                release = release_version(answer.read().decode())
        except OSError as err:
            cached = sorted((self.cache / "images").glob(f"debian-{suite}-*.oci.tar"))
            if not cached:
                raise RuntimeError(f"cannot read {mirror}/dists/{suite}/Release ({err}) and no base is cached") from err
            release = cached[-1].name.removeprefix(f"debian-{suite}-").split(".oci")[0].split("-")[0]
            self.log(f"{mirror} unreachable ({err}): using the cached base of Debian {release}")
        name = base_image_name(suite, release, ca_hash, flavour)
        self.release_prefix = f"{BASE_REPO}:{suite}-{release}"
        archive = self.cache / "images" / f"debian-{name.rsplit(':', 1)[1]}.oci.tar"
        if name in self.daemon.ctr("images", "ls", "-q").split():
            return name
        if not archive.is_file():
            packages = BASE_PACKAGES + (MECHANICS_PACKAGES if flavour == "pip" else ())
            self._mmdebstrap(suite, mirror, cas, name, archive, packages)
        self.log(f"importing {name}")
        self.daemon.ctr("images", "import", str(archive))
        return name

    def _mmdebstrap(self, suite: str, mirror: str, cas: list[Path], name: str, archive: Path,
                    packages: Sequence[str]) -> None:
        if shutil.which("mmdebstrap") is None:
            raise RuntimeError("mmdebstrap is missing (Debian: apt-get install mmdebstrap)")
        archive.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.log(f"making the base {name} with mmdebstrap (about a minute)")
        with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--components=main", "--include=" + ",".join(packages),
                    # Documentation and translations are never read in a container.
                    "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright"]
            for ca in cas:
                argv.append(f"--customize-hook=upload {ca} {LOCAL_CA_DIR / ca.name}")
            if cas:
                argv.append("--customize-hook=chroot \"$1\" update-ca-certificates")
            # Apt's lists are not needed at run time.
            argv.append("--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*")
            argv += [suite, str(rootfs), mirror]
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            ociarchive.write_archive(rootfs, name, archive, cmd=["python3"])
        self.log(f"base made in {time.monotonic() - started:.0f}s ({archive.stat().st_size >> 20} MiB)")

    def __enter__(self) -> Builder:
        state = RUN_DIR / "buildkit"
        state.mkdir(parents=True, exist_ok=True)
        # One build at a time per machine (one buildkitd socket and root); a second one waits.
        self.lock = (state / "build.lock").open("w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log("waiting for another image build on this machine")
            fcntl.flock(self.lock, fcntl.LOCK_EX)
        pid_file = state / "buildkitd.pid"
        stale = _read_pid(pid_file)
        if stale is not None:  # a build that was killed left its buildkitd behind
            terminate(stale)
        self.daemon.acquire(HOLDER, os.getpid(), self.log)
        config = state / "buildkitd.toml"
        config.write_text(render_buildkitd_config(self.cache / "buildkit", self.address, self.daemon.layout.socket))
        log_file = state / "buildkitd.log"
        self.log(f"starting buildkitd (log: {log_file})")
        env = {**os.environ, "PATH": os.pathsep.join([str(self.tools.runc.parent), os.environ.get("PATH", "")])}
        self.proc = spawn_detached([str(self.tools.buildkitd), "--config", str(config)], env, log_file)
        pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + 60
        while self.buildctl("debug", "workers", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"buildkitd did not start; see {log_file}")
            time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        (RUN_DIR / "buildkit" / "buildkitd.pid").unlink(missing_ok=True)
        self.daemon.release(HOLDER, self.log)
        if self.lock is not None:
            self.lock.close()

    def buildctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.tools.buildctl), "--addr", self.address, *args]
        done = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, check=False)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def build(self, spec: ImageSpec, base: str, *, no_cache: bool = False) -> float:
        started = time.monotonic()
        self.log(f"building {spec.tag} from {spec.dockerfile}")
        with tempfile.TemporaryDirectory(prefix="trtop-native-") as native:
            context = None
            if uses_native_stage(spec):
                from trtop_dev.native import build_http_frontend

                build_http_frontend(Path(native) / "out")
                context = Path(native)
            self.buildctl(*build_args(spec, base, dict(os.environ), context), *(["--no-cache"] if no_cache else []))
        seconds = time.monotonic() - started
        self.log(f"built {spec.tag} in {seconds:.0f}s")
        return seconds

    def smoke(self, spec: ImageSpec) -> None:
        """Run ``spec.smoke`` in the built image (a build of one RUN step, exported nowhere); RuntimeError with
        its output when it fails."""
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="trtop-smoke-") as folder:
            (Path(folder) / "Dockerfile").write_text(smoke_dockerfile(spec))
            self.buildctl("build", "--frontend", "dockerfile.v0", "--local", f"context={folder}",
                          "--local", f"dockerfile={folder}", "--opt", "cmdline=builtin",
                          "--opt", "image-resolve-mode=local", "--no-cache")  # no --output: nothing exported
        self.log(f"{spec.tag}: smoke check passed in {time.monotonic() - started:.0f}s ({spec.smoke})")

    def disk_shortfall(self) -> str | None:
        """Why the build would fill the disk of the image store (None: it fits)."""
        return diskspace.shortfall(diskspace.usage(self.cache), need=BUILD_NEEDS_BYTES,
                                   reserve_percent=nodeconfig.EVICTION_FREE_PERCENT, purpose="Building the images")

    def prune(self, keep: Sequence[str]) -> None:
        """Old tags of our images, stale CRI aliases, and BuildKit's cache beyond its cap."""
        repos = [BASE_REPO, *(spec.tag.rsplit(":", 1)[0] for spec in CPU_IMAGES + GPU_MECHANICS_IMAGES)]
        listing = self.daemon.ctr("images", "ls")
        bases = [line.split()[0] for line in listing.splitlines()
                 if self.release_prefix and line.startswith(self.release_prefix)]
        stale = stale_image_refs(listing, [*keep, *bases], repos)
        if stale:
            self.daemon.ctr("images", "rm", "--sync", *stale)
            self.log(f"pruned {len(stale)} old image names")
        # --all: layers shared between records count too (without it the pip stages piled up to 8 GB). The cap keeps
        # the dependency stages of all three images (the converter's TensorFlow alone is ~1.7 GB): at 1 GB they were
        # dropped now and then, and the next code change installed every dependency again (99-131 s, not ~20 s).
        self.buildctl("prune", "--all", "--keep-storage", str(BUILD_CACHE_KEEP_MB))


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return None
    return pid if process_running(pid) else None


def render_buildkitd_config(root: Path, address: str, containerd_socket: Path) -> str:
    """buildkitd.toml: the containerd worker only, host network, its cache capped."""
    return "\n".join([
        f"root = '{root}'",
        "[grpc]",
        f"  address = ['{address}']",
        "[worker.oci]",
        "  enabled = false",
        "[worker.containerd]",
        "  enabled = true",
        f"  address = '{containerd_socket}'",
        # The CRI's namespace: what is built here is what the kubelet runs.
        "  namespace = 'k8s.io'",
        "  snapshotter = 'overlayfs'",
        # RUN steps share the host's network (no CNI for builds; pip reaches PyPI as the host does).
        "  networkMode = 'host'",
        "  gc = true",
        "  reservedSpace = '1GB'",
        "  maxUsedSpace = '6GB'",  # above what a prune keeps (BUILD_CACHE_KEEP_MB), room for a build's new records
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/build-images.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help=f"which images: {', '.join(s.name for s in CPU_IMAGES)} (default: all of them)")
    parser.add_argument("--jobs", type=int, default=2, help="images built at once (default 2)")
    parser.add_argument("--no-cache", action="store_true", help="run every step again (BuildKit's cache unused)")
    parser.add_argument("--gpu-mechanics", action="store_true",
                        help="also build the GPU images (server, converter) on Debian + pip, TensorRT skipped "
                             "(tagged localhost/trtop/*-mechanics: they prove the Dockerfiles' steps, not GPU serving)")
    args = parser.parse_args(argv)
    unknown = set(args.images) - {s.name for s in CPU_IMAGES + GPU_MECHANICS_IMAGES}
    if unknown:
        parser.error(f"unknown image(s) {', '.join(sorted(unknown))}")
    start = time.monotonic()

    def log(message: str) -> None:
        print(f"[build-images {time.monotonic() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    gpu = args.gpu_mechanics or any(s.name in args.images for s in GPU_MECHANICS_IMAGES)
    wanted = [s for s in CPU_IMAGES + (GPU_MECHANICS_IMAGES if gpu else ())
              if not args.images or s.name in args.images or (args.gpu_mechanics and s.gpu)]
    root = workspace.repo_root()
    with Builder(root, log) as builder:
        bases = {False: builder.base() if any(not s.gpu for s in wanted) else "",
                 True: builder.base("pip") if gpu else ""}
        kept = [b for b in bases.values() if b] + [s.tag for s in CPU_IMAGES + GPU_MECHANICS_IMAGES]
        short = builder.disk_shortfall()
        if short:  # a build that failed never pruned: what it left may be the space we need
            builder.prune([*kept, builder.daemon.pause_image])
            short = builder.disk_shortfall()
        if short:
            log(short)
            return 1
        if gpu:
            log("GPU images: mechanics-only build on Debian + pip; the TensorRT, CUDA and cuDNN layers of NVIDIA's "
                f"base ({versions.TENSORRT_BASE_IMAGE}) are skipped: it cannot be fetched on this machine")
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda spec: builder.build(spec, bases[spec.gpu], no_cache=args.no_cache), wanted))
            list(pool.map(builder.smoke, [spec for spec in wanted if spec.smoke]))
        builder.prune([*kept, builder.daemon.pause_image])
    if not gpu:
        log("the GPU images (converter, server) are not built: their base is NVIDIA's TensorRT image, which cannot "
            "be fetched here (--gpu-mechanics builds them on Debian + pip, TensorRT skipped)")
    log(f"done in {time.monotonic() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
