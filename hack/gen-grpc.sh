#!/usr/bin/env bash
# Regenerates the Python modules of the Triton / KServe v2 gRPC protocol from the vendored
# .proto files in operator/trtop/serve/grpc/proto/ (BSD-3, triton-inference-server/common;
# proto/README.md names the commit). The generated *_pb2.py / *_pb2.pyi are committed, so the
# server needs only grpcio + protobuf at run time.
#   hack/gen-grpc.sh
# grpcio-tools goes into a throwaway venv (it would raise setuptools in .venv and so in the
# image pins). Its version fixes the gencode: 1.81.1 emits protobuf 6.33.5 code, what
# tritonclient 2.73 ships; the descriptors must stay byte-identical to tritonclient's so the
# client and the server load in one process (tests/serve/test_grpc.py checks).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools_version=${GRPCIO_TOOLS_VERSION:-1.81.1}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "grpcio-tools==$tools_version"
dir=$root/operator/trtop/serve/grpc/proto
cd "$dir"
"$venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. grpc_service.proto model_config.proto
# protoc writes top-level imports (`import model_config_pb2`); the modules live in a package.
sed -i 's/^import model_config_pb2 as /from . import model_config_pb2 as /' grpc_service_pb2.py grpc_service_pb2.pyi
echo "gen-grpc: regenerated $(ls "$dir"/*_pb2.py* | wc -l) files in ${dir#"$root"/} with grpcio-tools $tools_version"
