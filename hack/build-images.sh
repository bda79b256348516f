#!/usr/bin/env bash
# Builds the CPU images (server-cpu, operator) from images/*/Dockerfile* without Docker:
# BuildKit on this machine's containerd (the real node's, in its k8s.io namespace) on a
# Debian base made by mmdebstrap. Needs root, the Python env (hack/install-python.sh),
# mmdebstrap and the node's tools (built here by hack/build-tools.sh node/buildkit when missing).
# Usage: hack/build-images.sh [server-cpu|operator ...] [--jobs N]   (details: trtop_dev/devcluster/images.py)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
PYTHONPATH="$PWD/operator${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m trtop_dev.devcluster.images "$@"
