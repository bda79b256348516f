"""`helm lint --strict` of the chart with its defaults and with every ci/*-values.yaml."""
from __future__ import annotations

import pytest

from tests.charts.chart import CHART, run_helm

VALUE_FILES = sorted((CHART / "ci").glob("*-values.yaml"))


def test_ci_values_cover_both_modes():
    assert {p.name for p in VALUE_FILES} >= {"default-values.yaml", "namespaced-values.yaml"}


@pytest.mark.parametrize("values", VALUE_FILES, ids=lambda p: p.name)
def test_helm_lint_strict(helm_bin, values):
    done = run_helm(helm_bin, "lint", "--strict", str(CHART), "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout
    # --strict turns warnings into failures; say so if helm ever prints one anyway.
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout
