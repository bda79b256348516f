"""Builds the native HTTP front-end (``native/http``, Go) on this machine: for tests, benchmarks
and the dev images. The images build it themselves (a Go stage in images/server/Dockerfile*),
with the same flags as here: a static binary (no cgo), so it runs on any base image.

    python -m trtop_dev.native [OUT_DIR]     # prints the binary's path (default: .work/native)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from trtop import names

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "native" / "http"
DEFAULT_OUT = ROOT / ".work" / "native"
GO_FLAGS = ("-trimpath", "-ldflags=-s -w")  # also in images/server/Dockerfile*


def go() -> str | None:
    return shutil.which("go")


def build_http_frontend(out_dir: Path = DEFAULT_OUT) -> Path:
    """``out_dir/trtop-http``, built from ``native/http`` (Go's build cache makes a rebuild take ~1s)."""
    exe = go()
    if exe is None:
        raise RuntimeError("Go is not installed: the native HTTP front-end cannot be built (https://go.dev/dl)")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / names.HTTP_FRONTEND_BINARY
    env = dict(os.environ, CGO_ENABLED="0")
    subprocess.run([exe, "build", *GO_FLAGS, "-o", str(target), "."], cwd=SOURCE, env=env, check=True)
    return target


if __name__ == "__main__":
    print(build_http_frontend(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
