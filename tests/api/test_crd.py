"""The CRD is the API's source of truth: structural, described, in sync with docs and defaults."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trtop import names
from trtop.api import docs
from trtop.api.errors import SpecError
from trtop.api.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "modeldeployment.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(schema, path="spec"):
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", sub
        yield from walk(sub, f"{path}.{name}")


def test_names_match_the_single_source_of_truth():
    assert CRD["spec"]["group"] == names.GROUP
    assert CRD["spec"]["names"]["kind"] == names.KIND and CRD["spec"]["names"]["plural"] == names.PLURAL
    assert names.SHORT_NAME in CRD["spec"]["names"]["shortNames"]
    assert CRD["spec"]["versions"][0]["name"] == names.VERSION


def test_every_spec_field_has_a_description():
    missing = [p for p, sub in walk(SCHEMA["properties"]["spec"]) if not sub.get("description")]
    assert missing == []


def test_scale_and_status_subresources():
    sub = CRD["spec"]["versions"][0]["subresources"]
    assert sub["status"] == {} and sub["scale"]["specReplicasPath"] == ".spec.replicas"
    assert sub["scale"]["labelSelectorPath"] == ".status.selector"


def test_schema_defaults_agree_with_the_parser():
    """Apply the schema's defaults to a minimal spec and check parse_spec() sees the same values."""
    def defaults(schema):
        out = {}
        for name, sub in (schema.get("properties") or {}).items():
            if "default" in sub:
                out[name] = sub["default"]
            elif sub.get("type") == "object" and sub.get("properties"):
                nested = defaults(sub)
                if nested:
                    out[name] = nested
        return out
    d = defaults(SCHEMA["properties"]["spec"])
    d["model"] = {**d.get("model", {}), "uri": "s3://b/m"}
    with_schema = parse_spec(d)
    bare = parse_spec({"model": {"uri": "s3://b/m"}})
    assert with_schema == bare


def test_api_reference_is_generated_from_the_crd():
    assert (ROOT / "docs" / "api.md").read_text() == docs.render(CRD), \
        "docs/api.md is stale: run `python -m trtop.api.docs > docs/api.md`"


# Specs parse_spec() refuses: the API server must refuse them too, so `kubectl apply` (Helm, Argo CD)
# says what is wrong instead of the object being admitted and failing later in its status.
# (label, spec patch over a minimal valid spec)
REFUSED_BY_BOTH = [
    ("inputShapes dimension 0", {"model": {"inputShapes": {"x": [0, 3]}}}),
    ("inputShapes empty", {"model": {"inputShapes": {"x": []}}}),
    ("negative quantity", {"serving": {"resources": {"limits": {"cpu": "-1"}}}}),
    ("negative integer quantity", {"serving": {"resources": {"requests": {"memory": -1}}}}),
    ("fractional exponent", {"serving": {"resources": {"requests": {"memory": "1e1.5"}}}}),
    ("sidecar negative quantity", {"serving": {"sidecars": [{"name": "c", "image": "x",
                                                            "resources": {"limits": {"cpu": -1}}}]}}),
    ("label key with a space", {"serving": {"podLabels": {"a b": "x"}}}),
    ("label value with a leading dash", {"engine": {"podLabels": {"team": "-x-"}}}),
    # A number where the Deployment needs a string: admitted, the serving Deployment's apply failed on every reconcile.
    ("env value not a string", {"serving": {"env": [{"name": "WORKERS", "value": 5}]}}),
    # One GPU a serving pod: a 2 was replaced by 1 in the pods while placement counted 2 a pod.
    ("two GPUs a serving pod", {"serving": {"resources": {"limits": {"nvidia.com/gpu": 2}}}}),
    ("two GPUs requested as a string", {"serving": {"resources": {"requests": {"nvidia.com/gpu": "2"}}}}),
    ("a sidecar with a GPU", {"serving": {"sidecars": [{"name": "c", "image": "x",
                                                       "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}),
]
# Bounds of what one object may make the operator plan and carry (each target is a build Job and a status entry).
REFUSED_BY_THE_API_SERVER = [
    ("33 targets", {"engine": {"targets": [f"8.{i}" for i in range(33)]}}),
    ("a 5000-character URI", {"model": {"uri": "s3://bucket/" + "m" * 5000}}),
    ("17 input dimensions", {"model": {"inputShapes": {"x": [1] * 17}}}),
]
ADMITTED = [
    ("labels with a prefix", {"serving": {"podLabels": {"example.com/team": "ml_1.a"}},
                              "engine": {"podLabels": {"cost-center": "42"}}}),
    ("quantities", {"serving": {"resources": {"limits": {"cpu": 2, "memory": "4Gi"}, "requests": {"cpu": "+500m"}}}}),
    ("dynamic dimensions", {"model": {"inputShapes": {"image": [-1, 224, 224, 3]}}}),
    ("string env", {"serving": {"env": [{"name": "WORKERS", "value": "5"}]}}),
    ("one GPU, as trtop sets it", {"serving": {"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": 2},
                                                             "requests": {"nvidia.com/gpu": "1"}}}}),
    ("32 targets", {"engine": {"targets": ["auto", "cpu"] + [f"8.{i}/NVIDIA-L{i}" for i in range(30)]}}),
]


def _spec(patch):
    spec = {"model": {"uri": "s3://bucket/model"}}
    for section, fields in patch.items():
        spec[section] = {**spec.get(section, {}), **fields}
    return spec


@pytest.fixture(scope="module")
def api_namespace(dev_cluster):
    """This checkout's CRD, applied to the dev cluster, and a namespace to dry-run objects in."""
    from trtop_dev.devcluster import testing
    dev_cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=trtop-crd-tests",
                        "-f", str(ROOT / "crds" / "modeldeployment.yaml"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.trtop.io")
    name = testing.create_namespace(dev_cluster, "crd-schema")
    yield name
    testing.delete_namespace(dev_cluster, name)


def _api_server_admits(dev_cluster, namespace, spec):
    body = {"apiVersion": names.API_VERSION, "kind": names.KIND,
            "metadata": {"name": "schema-probe", "namespace": namespace}, "spec": spec}
    done = dev_cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    return done.returncode == 0, done.stderr


@pytest.mark.parametrize("patch", [p for _, p in REFUSED_BY_BOTH], ids=[n for n, _ in REFUSED_BY_BOTH])
def test_the_api_server_refuses_what_the_parser_refuses(dev_cluster, api_namespace, patch):
    with pytest.raises(SpecError):
        parse_spec(_spec(patch))
    admitted, why = _api_server_admits(dev_cluster, api_namespace, _spec(patch))
    assert not admitted, "the CRD admits a spec parse_spec() refuses"
    assert "is invalid" in why


@pytest.mark.parametrize("patch", [p for _, p in REFUSED_BY_THE_API_SERVER],
                         ids=[n for n, _ in REFUSED_BY_THE_API_SERVER])
def test_the_api_server_bounds_what_one_object_costs(dev_cluster, api_namespace, patch):
    admitted, why = _api_server_admits(dev_cluster, api_namespace, _spec(patch))
    assert not admitted and "is invalid" in why


@pytest.mark.parametrize("patch", [p for _, p in ADMITTED], ids=[n for n, _ in ADMITTED])
def test_valid_specs_pass_both(dev_cluster, api_namespace, patch):
    parse_spec(_spec(patch))
    admitted, why = _api_server_admits(dev_cluster, api_namespace, _spec(patch))
    assert admitted, why
