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
