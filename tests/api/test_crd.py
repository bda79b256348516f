"""The CRD is the API's source of truth: structural, described, in sync with docs and defaults."""
from __future__ import annotations

from pathlib import Path

import yaml

from trtop import names
from trtop.api import docs
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
