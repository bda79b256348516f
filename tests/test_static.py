"""Static checks CI runs with the tests: types (mypy, strict on the pure and data-plane
packages) and the layering contracts (import-linter: the planner never imports a cluster client)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy():
    done = run("mypy")
    assert done.returncode == 0, done.stdout[-4000:]


def test_import_contracts():
    done = run("lint-imports")
    assert done.returncode == 0, done.stdout[-4000:]


def test_sources_compile_without_warnings():
    """Python 3.12 makes an invalid escape in a string a SyntaxWarning (3.11: a DeprecationWarning, which pytest's
    filter ignores), and ``filterwarnings = error`` turns it into a collection error: the H200 host's Python 3.12
    could not collect tests/gpu/test_tensorrt.py for one ``"\\["``. Compiled here with every warning an error, so
    the 3.11 of CI finds what 3.12 (the server images, the GPU host) would refuse."""
    import warnings

    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    bad = []
    for name in tracked.stdout.split():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile((ROOT / name).read_bytes(), name, "exec", dont_inherit=True)
            except (SyntaxError, SyntaxWarning, DeprecationWarning) as exc:
                bad.append(f"{name}: {exc}")
    assert not bad, "\n".join(bad)
