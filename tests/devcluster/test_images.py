"""hack/build-images.sh's decisions: base naming, buildctl arguments, what pruning removes."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from trtop import versions
from trtop_dev.devcluster import images
from trtop_dev.devcluster.images import CPU_IMAGES, ImageSpec


def test_base_is_named_by_suite_point_release_and_local_cas() -> None:
    assert images.base_image_name("bookworm", "12.15", "") == "localhost/trtop/debian:bookworm-12.15"
    assert images.base_image_name("bookworm", "12.15", "ab12cd34") == "localhost/trtop/debian:bookworm-12.15-caab12cd34"


def test_point_release_is_read_from_the_release_file() -> None:
    text = "Origin: Debian\nSuite: oldstable\nVersion: 12.15\nCodename: bookworm\n"
    assert images.release_version(text) == "12.15"
    with pytest.raises(ValueError, match="Version"):
        images.release_version("Origin: Debian\n")


def test_every_cpu_image_is_tagged_like_make_images() -> None:
    assert {s.tag for s in CPU_IMAGES} == {versions.SERVER_CPU_IMAGE, versions.CONVERTER_CPU_IMAGE,
                                         versions.OPERATOR_IMAGE}
    for spec in CPU_IMAGES:
        assert Path(spec.dockerfile).is_file() and not spec.gpu


def test_build_uses_the_builtin_frontend_and_the_local_base() -> None:
    spec = ImageSpec("server-cpu", "images/server/Dockerfile.cpu", "ghcr.io/trtop/server-cpu:0.1.0")
    args = images.build_args(spec, "localhost/trtop/debian:bookworm-12.15", {"HTTPS_PROXY": "http://p:3128"})
    pairs = {args[i + 1] for i, a in enumerate(args) if a == "--opt"}
    assert {"filename=Dockerfile.cpu", "cmdline=builtin", "image-resolve-mode=local",
            "build-arg:PYTHON_IMAGE=localhost/trtop/debian:bookworm-12.15",
            f"build-arg:TRTOP_VERSION={versions.TRTOP_VERSION}", "build-arg:HTTPS_PROXY=http://p:3128"} <= pairs
    assert "dockerfile=images/server" in args and "context=." in args
    assert args[args.index("--output") + 1].startswith("type=image,name=ghcr.io/trtop/server-cpu:0.1.0,unpack=true")


def test_server_images_get_the_native_front_end_built_here_in_place_of_their_go_stage(tmp_path: Path) -> None:
    by_name = {s.name: s for s in CPU_IMAGES + images.GPU_MECHANICS_IMAGES}
    assert {n for n, s in by_name.items() if images.uses_native_stage(s)} == {"server-cpu", "server"}
    args = images.build_args(by_name["server-cpu"], "localhost/trtop/debian:bookworm-12.15", {}, tmp_path)
    assert f"trtop-http={tmp_path}" in args and "context:trtop-http=local:trtop-http" in args
    assert not any("trtop-http" in a for a in images.build_args(by_name["operator"], "b", {}))


LISTING = """\
REF TYPE DIGEST SIZE PLATFORMS LABELS
ghcr.io/trtop/server-cpu:0.1.0 m sha256:new 1 linux/amd64 -
ghcr.io/trtop/server-cpu:0.0.9 m sha256:old 1 linux/amd64 -
sha256:aaa m sha256:new 1 linux/amd64 -
sha256:bbb m sha256:old 1 linux/amd64 -
sha256:ccc m sha256:theirs 1 linux/amd64 -
docker.io/library/busybox:1 m sha256:theirs 1 linux/amd64 -
localhost/trtop/debian:bookworm-12.14 m sha256:olddeb 1 linux/amd64 -
"""


def test_prune_drops_old_tags_and_their_aliases_and_keeps_other_images() -> None:
    stale = images.stale_image_refs(LISTING, keep=["ghcr.io/trtop/server-cpu:0.1.0"],
                                    repos=["ghcr.io/trtop/server-cpu", "localhost/trtop/debian"])
    assert stale == ["ghcr.io/trtop/server-cpu:0.0.9", "localhost/trtop/debian:bookworm-12.14", "sha256:bbb"]


def test_buildkitd_uses_only_the_containerd_worker_in_the_cri_namespace() -> None:
    config = tomllib.loads(images.render_buildkitd_config(Path("/c/buildkit"), "unix:///run/b.sock", Path("/run/c.sock")))
    assert config["worker"]["oci"]["enabled"] is False
    worker = config["worker"]["containerd"]
    assert (worker["address"], worker["namespace"], worker["networkMode"]) == ("/run/c.sock", "k8s.io", "host")
    assert worker["gc"] is True and config["grpc"]["address"] == ["unix:///run/b.sock"]


def test_gpu_images_build_on_the_pip_base_in_place_of_nvidias_and_say_mechanics() -> None:
    for spec in images.GPU_MECHANICS_IMAGES:
        assert spec.gpu and "mechanics" in spec.tag and Path(spec.dockerfile).is_file()
        args = images.build_args(spec, "localhost/trtop/debian:bookworm-12.15-pip", {})
        pairs = {args[i + 1] for i, a in enumerate(args) if a == "--opt"}
        assert "build-arg:TENSORRT_BASE_IMAGE=localhost/trtop/debian:bookworm-12.15-pip" in pairs
        assert f"build-arg:TENSORRT_VERSION={versions.TENSORRT_VERSION}" in pairs
        assert not any(p.startswith("build-arg:PYTHON_IMAGE=") for p in pairs)
    assert images.base_image_name("bookworm", "12.15", "ab", "pip") == "localhost/trtop/debian:bookworm-12.15-pip-caab"


def test_gpu_mechanics_images_are_smoke_checked_as_built_and_as_their_user() -> None:
    """No test runs the GPU images (kwok pods run nothing): the build runs each one's entrypoint and imports."""
    for spec in images.GPU_MECHANICS_IMAGES:
        assert spec.smoke, f"{spec.name}: no smoke check"
        lines = images.smoke_dockerfile(spec).splitlines()
        assert lines == [f"FROM {spec.tag}", f"RUN {spec.smoke}"]  # no USER: the image's own (uid 1000) runs it
        command = {"server": "serve", "converter": "convert"}[spec.name]
        assert f"trtop {command} --help" in spec.smoke and f"import trtop.{command}" in spec.smoke
        # The server's Dockerfile puts the native front-end in place: it must be found on PATH.
        assert ("command -v trtop-http" in spec.smoke) == images.uses_native_stage(spec)
    assert not any(spec.smoke for spec in images.CPU_IMAGES)  # the e2e tests run those on the real node
