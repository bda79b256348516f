"""The chart's crds/: the ModelDeployment CRD (a copy of crds/, the source of truth) and kopf's peering CRDs."""
from __future__ import annotations

import yaml
from kopf._cogs.structs import references

from tests.charts.chart import CHART, ROOT


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_chart_crd_is_identical_to_the_source_of_truth():
    assert (CHART / "crds" / "modeldeployment.yaml").read_bytes() == (ROOT / "crds" / "modeldeployment.yaml").read_bytes(), (
        "charts/trtop/crds/modeldeployment.yaml differs from crds/modeldeployment.yaml: "
        "cp crds/modeldeployment.yaml charts/trtop/crds/ && make manifests")


def test_chart_crds_are_exactly_the_modeldeployment_and_kopf_peering():
    names = sorted(d["metadata"]["name"] for p in (CHART / "crds").glob("*.yaml") for d in load_all(p))
    assert names == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "modeldeployments.trtop.io"]


def test_peering_crds_serve_what_kopf_peers_through():
    crds = {d["spec"]["names"]["plural"]: d for d in load_all(CHART / "crds" / "kopf-peering.yaml")}
    for selector, scope in ((references.CLUSTER_PEERINGS_K, "Cluster"), (references.NAMESPACED_PEERINGS_K, "Namespaced")):
        crd = crds[selector.any_name]
        assert f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}" == f"{selector.group}/{selector.version}"
        assert crd["spec"]["scope"] == scope
        version = crd["spec"]["versions"][0]
        assert version["served"] and version["storage"]
        # kopf writes each peer's keep-alive under status.<identity>: arbitrary keys must survive.
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
