"""The KServe v2 / Triton gRPC protocol (``inference.GRPCInferenceService``) of ``trtop serve``.

``build_grpc_server`` (in ``server``) is what the server process calls; ``wire`` converts
messages; ``proto`` holds the vendored .proto files and their generated modules.
"""
from __future__ import annotations

from trtop.serve.grpc.server import build_grpc_server

__all__ = ["build_grpc_server"]
