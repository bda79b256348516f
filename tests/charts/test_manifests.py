"""deploy/ (plain manifests for `kubectl apply -k` and GitOps) is generated from the chart: no drift.

hack/gen-manifests.sh regenerates into a temporary folder; every file must equal the
committed one, and `kubectl kustomize` of each install must give exactly the chart's
objects (plus the CRDs and namespaces), so `apply -k` and `helm install` make one operator.
"""
from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.chart import CHART, NAMESPACED_VALUES, ROOT
from trtop_dev.devcluster.tools import ensure_tools

DEPLOY = ROOT / "deploy"


def key(obj):
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory, helm_bin) -> Path:
    out = tmp_path_factory.mktemp("deploy")
    done = subprocess.run(["bash", str(ROOT / "hack" / "gen-manifests.sh"), str(out)], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "HELM": str(helm_bin)})
    assert done.returncode == 0, done.stderr
    return out


def test_deploy_is_what_the_chart_generates(regenerated):
    assert files_under(regenerated) == files_under(DEPLOY)
    drifted = [f for f in sorted(files_under(DEPLOY)) if not filecmp.cmp(DEPLOY / f, regenerated / f, shallow=False)]
    assert drifted == [], f"deploy/ drifted from charts/trtop in {drifted}: run `make manifests` and commit"


@pytest.mark.parametrize("install,values", [("cluster-wide", []), ("namespaced", ["-f", str(NAMESPACED_VALUES)])])
def test_kustomize_build_gives_the_charts_objects(render, install, values):
    kubectl = ensure_tools(ROOT).kubectl
    built = subprocess.run([str(kubectl), "kustomize", str(DEPLOY / install)], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    objects = {key(o): o for o in yaml.safe_load_all(built) if o}
    chart_objects = {key(o): o for o in render(*values)}
    crds = {key(o): o for p in sorted((CHART / "crds").glob("*.yaml")) for o in yaml.safe_load_all(p.read_text()) if o}
    namespaces = {k for k in objects if k[1] == "Namespace"}
    assert set(objects) == set(chart_objects) | set(crds) | namespaces
    for k, obj in chart_objects.items():
        assert objects[k] == obj, f"{k} differs between deploy/{install} and the chart"
    # Every namespaced object lands in a namespace the kustomization creates.
    assert {k[2] for k in objects if k[2]} <= {k[3] for k in namespaces}
