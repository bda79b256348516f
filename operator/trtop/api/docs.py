"""Generate docs/api.md (the API reference) from the CRD's schema descriptions.

``python -m trtop.api.docs [crds/modeldeployment.yaml] > docs/api.md``; a test checks the
committed file is what this prints, so the reference never drifts from the schema.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CRD = Path(__file__).resolve().parents[3] / "crds" / "modeldeployment.yaml"


def _rows(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, str, str, str]]:
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        kind = sub.get("type", "object")
        if kind == "array" and "items" in sub:
            kind = f"[]{sub['items'].get('type', 'object')}"
        extra = []
        if "enum" in sub:
            extra.append("one of " + ", ".join(f"`{v}`" for v in sub["enum"]))
        if "default" in sub:
            extra.append(f"default `{sub['default']}`")
        if "minimum" in sub:
            extra.append(f"min {sub['minimum']}")
        if "maximum" in sub:
            extra.append(f"max {sub['maximum']}")
        if "pattern" in sub:
            extra.append(f"pattern `{sub['pattern']}`")
        desc = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
        yield here, kind, desc, "; ".join(extra).replace("|", "\\|")
        yield from _rows(sub, here)
        if sub.get("type") == "array":
            yield from _rows(sub.get("items") or {}, here + "[]")


def render(crd: Mapping[str, Any]) -> str:
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    out = [
        f"# {kind} API reference ({group}/{version['name']})",
        "",
        "Generated from `crds/modeldeployment.yaml` by `python -m trtop.api.docs > docs/api.md`;",
        "do not edit by hand (tests/api/test_crd.py fails when this file is stale).",
        "`kubectl explain modeldeployment.spec` prints the same descriptions.",
        "",
        " ".join(str(schema.get("description", "")).split()),
        "",
    ]
    for section in ("spec", "status"):
        out += [f"## {section}", "", "| field | type | description | constraints |", "|---|---|---|---|"]
        for path, kind_, desc, extra in _rows(schema["properties"][section], section):
            out.append(f"| `{path}` | {kind_} | {desc} | {extra} |")
        out.append("")
    rules = [r for r in _all_rules(schema)]
    if rules:
        out += ["## Cross-field rules (CEL, enforced by the API server)", ""]
        out += [f"- {msg}" for msg in rules]
        out.append("")
    return "\n".join(out)


def _all_rules(schema: Mapping[str, Any]) -> Iterator[str]:
    for rule in schema.get("x-kubernetes-validations") or []:
        yield str(rule["message"])
    for sub in (schema.get("properties") or {}).values():
        yield from _all_rules(sub)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_CRD
    sys.stdout.write(render(yaml.safe_load(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
