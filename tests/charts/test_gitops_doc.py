"""docs/gitops.md's Argo CD health rule, run in Lua 5.1 (Argo CD's gopher-lua dialect).

The rule reads only the kstatus fields; these cases are the states a ModelDeployment
goes through (statuses shaped as the operator writes them).
"""
from __future__ import annotations

import re

import pytest
import yaml

from tests.charts.chart import ROOT

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (pip install lupa) runs the Lua of docs/gitops.md")

DOC = (ROOT / "docs" / "gitops.md").read_text()
KEY = "resource.customizations.health.trtop.io_ModelDeployment"


def health_rule() -> str:
    block = re.search(r"```yaml\n(# argocd-cm\n.*?)```", DOC, re.DOTALL)
    assert block, "docs/gitops.md lost its argocd-cm health block"
    return yaml.safe_load(block.group(1))["data"][KEY]


def assess(obj: dict) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(health_rule())
    return result["status"], result["message"] or ""


def md(generation: int = 2, observed: int | None = 2, **conditions: tuple[str, str]) -> dict:
    obj: dict = {"metadata": {"name": "demo", "generation": generation}, "spec": {}}
    if observed is not None:
        obj["status"] = {"observedGeneration": observed, "conditions": [
            {"type": t, "status": s, "reason": "R", "message": m} for t, (s, m) in conditions.items()]}
    return obj


@pytest.mark.parametrize("obj,status,message", [
    (md(observed=None), "Progressing", "Waiting for the operator"),
    (md(observed=1, Ready=("True", "serving the old spec")), "Progressing", "Waiting for the operator"),
    (md(Ready=("False", "building 2 engines"), Reconciling=("True", "building 2 engines")),
     "Progressing", "building 2 engines"),
    (md(Ready=("True", "serving the current spec"), Reconciling=("False", "")), "Healthy", "serving the current spec"),
    (md(Ready=("False", "model.uri is empty"), Stalled=("True", "model.uri is empty")), "Degraded", "model.uri is empty"),
    (md(Ready=("False", "no engine yet"), Reconciling=("False", ""), Stalled=("False", "")), "Progressing", "no engine yet"),
], ids=["no-status", "stale-generation", "reconciling", "ready", "stalled", "not-ready"])
def test_argo_cd_health_rule_follows_kstatus(obj, status, message):
    assert assess(obj) == (status, message)
