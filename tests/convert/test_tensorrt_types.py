"""The TensorRT boundary (the converter's builder, the shared runtime, the server's backend) type-checks
against ``tensorrt-stubs`` (mypy --strict), and a wrong call is caught.

tensorrt-stubs installs ``tensorrt/__init__.pyi`` without a ``py.typed`` marker, so mypy
ignores it in site-packages; and the 10.13 stubs contain a few syntax errors (a parameter
named ``in``, a required parameter after defaults). The test copies them to a temporary
folder, patches those lines, and points MYPYPATH there. Errors *inside* the stubs are not
ours and are filtered out.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BOUNDARY = [REPO / "operator/trtop/convert/tensorrt_build.py", REPO / "operator/trtop/gpu/tensorrt.py",
            REPO / "operator/trtop/gpu/bucket.py", REPO / "operator/trtop/serve/backends/tensorrt_impl.py"]


def sanitized_stubs(dest: Path) -> Path:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    site = Path(spec.origin).parent.parent
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / package, dest / package, ignore=shutil.ignore_patterns("*.py", "*.so", "__pycache__"))
    for stub in dest.rglob("*.pyi"):
        text = stub.read_text()
        text = re.sub(r"([(,] *)in: ", r"\1in_: ", text)  # `in` is a keyword
        text = text.replace("channel_axis: int) -> IScaleLayer", "channel_axis: int = ...) -> IScaleLayer")
        stub.write_text(text)
    return dest


def mypy(files: list[Path], stubs: Path, tmp_path: Path) -> dict[str, list[str]]:
    env = {**os.environ, "MYPYPATH": f"{REPO / 'operator'}{os.pathsep}{stubs}"}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         "--config-file", "/dev/null", *map(str, files)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "prevented further checking" not in proc.stdout, proc.stdout[-3000:]
    found: dict[str, list[str]] = {str(f): [] for f in files}
    for line in proc.stdout.splitlines():
        for f in files:
            if line.startswith((str(f), str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f))):
                found[str(f)].append(line)
    return found


def test_boundary_matches_the_stubs_and_a_wrong_call_is_caught(tmp_path: Path) -> None:
    stubs = sanitized_stubs(tmp_path / "stubs")
    mutant = tmp_path / "mutant_build.py"
    source = BOUNDARY[0].read_text()
    for good, bad in [("set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, ", "set_memory_pool_limit(\"WORKSPACE\", "),
                      ("build_serialized_network(network, config)", "build_serialized_network(config)")]:
        assert good in source
        source = source.replace(good, bad)
    mutant.write_text(source)
    runtime_mutant = tmp_path / "mutant_runtime.py"
    source = BOUNDARY[1].read_text()
    good = "context.set_device_memory(self._scratch, self._scratch_size)"
    assert good in source
    runtime_mutant.write_text(source.replace(good, "context.set_device_memory(self._scratch)"))
    found = mypy([*BOUNDARY, mutant, runtime_mutant], stubs, tmp_path)
    for path in BOUNDARY:
        assert found[str(path)] == [], "\n".join(found[str(path)])
    mutant_errors = "\n".join(found[str(mutant)])
    assert "set_memory_pool_limit" in mutant_errors and "MemoryPoolType" in mutant_errors
    assert "build_serialized_network" in mutant_errors
    assert "set_device_memory" in "\n".join(found[str(runtime_mutant)])
