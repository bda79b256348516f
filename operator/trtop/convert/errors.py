"""The converter's exit codes and domain exceptions (one place; docs/converter.md lists them).

Every failure the converter knows about is a ``ConvertError`` of one of two classes:
``UserError`` (the request or the model is wrong: retrying cannot help, exit 2, the
build Job's podFailurePolicy fails the Job at once) and ``InfraError`` (the machine,
the network or the scheduler let us down: exit 3, the Job's backoffLimit retries it).
Raised anywhere in ``trtop.convert``; translated to an exit code only by ``cli.py``.
"""
from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0  # engine built and published, or already published (reused)
EXIT_INTERNAL_ERROR: Final = 1  # a bug in trtop (an unexpected exception); retried like infra
EXIT_USER_ERROR: Final = 2  # bad request / model / digest / unsupported op / parity: do not retry
EXIT_INFRA_ERROR: Final = 3  # network, OOM, workspace, wrong node, preemption: retry


class ConvertError(Exception):
    """A failure with a message a person can act on and an exit class."""

    exit_code: int = EXIT_INTERNAL_ERROR
    kind: str = "internal"

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage


class UserError(ConvertError):
    """The request or the model cannot be turned into an engine as asked: fix it, do not retry."""

    exit_code = EXIT_USER_ERROR
    kind = "user"


class InfraError(ConvertError):
    """A failure of the environment (network, memory, GPU, scheduling): a retry may succeed."""

    exit_code = EXIT_INFRA_ERROR
    kind = "infra"


# --- user errors ---------------------------------------------------------------------------
class BadRequestError(UserError):
    """The engine request itself is malformed or self-contradictory."""


class ModelNotFoundError(UserError):
    """The model URI names nothing (404, no such key, no such path)."""


class DigestMismatchError(UserError):
    """The fetched bytes are not the ones the request pinned with ``model.digest``."""


class ModelFormatError(UserError):
    """The model is corrupt, of an unknown format, or not the format the request says."""


class FetchRefusedError(UserError):
    """A URI the platform's fetch policy does not allow (scheme, host, private address, path, redirect)."""


class TooLargeError(UserError):
    """A download or an unpacked archive exceeds the fetch policy's byte or file caps."""


class UnsafeArchiveError(UserError):
    """An archive member would land outside the target folder (zip/tar slip), or is a link or device."""


class UnsupportedOpError(UserError):
    """The model uses an operation the ONNX converter or the backend cannot handle."""


class UnsupportedPrecisionError(UserError):
    """The installed stack cannot honour the requested precision (never a silent fp32)."""


class ParityError(UserError):
    """The built artifact disagrees with the original model beyond the precision's tolerance."""


class BuildError(UserError):
    """The backend refused to build this network (its log says why)."""


class MissingDependencyError(UserError):
    """The converter image lacks a library this request needs (TensorRT, ModelOpt, ...)."""


# --- infrastructure errors -----------------------------------------------------------------
class NetworkError(InfraError):
    """A remote store or model host could not be reached."""


class ResourceError(InfraError):
    """Out of host or GPU memory, or the workspace was too small for any tactic."""


class DeviceMismatchError(InfraError):
    """The GPU this Job landed on is not the requested target (a scheduling problem)."""


class NoDeviceError(InfraError):
    """No GPU is visible to a build that needs one."""


class PreemptedError(InfraError):
    """The process was asked to stop (SIGTERM: node drain, preemption, Job deletion)."""
