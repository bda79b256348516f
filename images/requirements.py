"""Print the requirements of trtop and some of its extras, one per line, from pyproject.toml.

    python images/requirements.py serve > requirements.txt

The CPU images install these first, in a layer of their own (with images/constraints.txt),
then trtop itself as a wheel with --no-deps: a change to trtop's code then rebuilds only trtop,
not TensorFlow or ONNX Runtime. Standard library only: it runs in the image's build stage.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(project: dict, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of ``extras`` (following ``trtop[...]`` self-references)."""
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: {name} has no extra {extra!r} (has: {', '.join(sorted(optional))})")
        seen.add(extra)
        for req in optional[extra]:
            if req.replace(" ", "").startswith(f"{name}["):
                todo += req.split("[", 1)[1].split("]", 1)[0].split(",")
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    print("\n".join(requirements(project, [e for arg in argv for e in arg.split(",") if e])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
