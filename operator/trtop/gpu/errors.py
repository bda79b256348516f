"""Errors of the shared GPU code; the converter and the server translate them into their own.

The converter maps them to exit classes (``CudaError.out_of_memory`` -> an infrastructure
error that is retried; a missing library -> the image is wrong), the server to
``StartupError`` (load, prepare) and ``InferenceFailed`` (run).
"""
from __future__ import annotations


class GpuError(Exception):
    """Base class: the message says what happened and what to do."""


class MissingLibraryError(GpuError):
    """TensorRT or the CUDA runtime library is not loadable in this container."""


class CudaError(GpuError):
    """A CUDA runtime call failed; ``code`` is its ``cudaError_t``."""

    OUT_OF_MEMORY = 2  # cudaErrorMemoryAllocation

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def out_of_memory(self) -> bool:
        return self.code == self.OUT_OF_MEMORY


class EngineLoadError(GpuError):
    """TensorRT refused the plan (another GPU architecture or TensorRT version, or corrupt bytes)."""


class EngineRunError(GpuError):
    """A batch could not run: a shape outside the engine's profiles, or TensorRT's enqueue failed."""
