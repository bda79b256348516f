"""Default images and the versions they carry: one place, read by the operator and the chart tests.

The chart's values.yaml repeats these (Helm cannot import Python); tests/charts checks
they agree, so a bump here that forgets the chart fails CI.
"""
from __future__ import annotations

from typing import Final

TRTOP_VERSION: Final = "0.1.0"
IMAGE_REGISTRY: Final = "ghcr.io/trtop"
OPERATOR_IMAGE: Final = f"{IMAGE_REGISTRY}/operator:{TRTOP_VERSION}"
CONVERTER_IMAGE: Final = f"{IMAGE_REGISTRY}/converter:{TRTOP_VERSION}"
# Build Jobs of the CPU target: the conversion stack without NVIDIA's TensorRT base (a tenth the size).
CONVERTER_CPU_IMAGE: Final = f"{IMAGE_REGISTRY}/converter-cpu:{TRTOP_VERSION}"
SERVER_IMAGE: Final = f"{IMAGE_REGISTRY}/server:{TRTOP_VERSION}"
SERVER_CPU_IMAGE: Final = f"{IMAGE_REGISTRY}/server-cpu:{TRTOP_VERSION}"
# TensorRT carried by the converter and server images (NVIDIA base image tag below).
TENSORRT_VERSION: Final = "10.13.0"
TENSORRT_BASE_IMAGE: Final = "nvcr.io/nvidia/tensorrt:25.08-py3"
# Go toolchain image of the server images' build stage for the native HTTP front-end (native/http).
GO_IMAGE: Final = "golang:1.26-bookworm"
# ONNX Runtime: the CPU target's "engine version" (part of CPU engine keys).
ONNXRUNTIME_VERSION: Final = "1.32"
