#!/usr/bin/env bash
# Creates .venv (if missing) and installs trtop with its dev extras: what CI and the images use.
# tensorrt-stubs is installed without dependencies: its dependency `tensorrt` is a stub
# wheel that downloads from NVIDIA's index, which this project cannot reach (see docs).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# images/constraints.txt pins what the images carry (make lock): CI tests those versions.
.venv/bin/python -m pip install -q -c images/constraints.txt -e '.[dev]'
.venv/bin/python -m pip install -q --no-deps 'tensorrt-stubs==10.13.0.35.1'
