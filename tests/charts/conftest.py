"""Fixtures of the chart tests: the pinned helm binary and a renderer of charts/trtop.

``render(*helm_args)`` runs ``helm template`` and returns the objects as dicts;
``render_error(*helm_args)`` expects the render to fail and returns helm's message.
The cluster tests use the shared ``dev_cluster`` / ``namespace`` fixtures (tests/conftest.py).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.chart import CHART, NAMESPACE, RELEASE, ROOT, run_helm
from trtop_dev.devcluster.tools import ensure_tools

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """helm at the version of hack/versions.env (built by hack/build-tools.sh when missing)."""
    return ensure_tools(ROOT).helm


@pytest.fixture(scope="session")
def render(helm_bin: Path) -> Render:
    @functools.lru_cache(maxsize=64)
    def _cached(args: tuple[str, ...], release: str, namespace: str) -> str:
        done = run_helm(helm_bin, "template", release, str(CHART), "--namespace", namespace, *args)
        assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def _render(*args: str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        # Parsed afresh each call: tests may change what they get.
        return [doc for doc in yaml.safe_load_all(_cached(args, release, namespace)) if doc]
    return _render


@pytest.fixture(scope="session")
def render_error(helm_bin: Path) -> Callable[..., str]:
    def _render_error(*args: str) -> str:
        done = run_helm(helm_bin, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
        assert done.returncode != 0, f"helm template {' '.join(args)} should have failed; it rendered:\n{done.stdout[:2000]}"
        return done.stderr
    return _render_error
