"""``trtop convert``: the build Job's program, and a tool to build one engine by hand.

    trtop convert                          # request from $TRTOP_ENGINE_REQUEST (the build Job)
    trtop convert --request req.json       # or a file, or - for stdin
    trtop convert --model ./m.keras --target cpu --store /tmp/engines
    trtop convert --print-digest ./saved_model/

Translates the pipeline's outcome into an exit code (``errors.EXIT_*``) and a short JSON
summary written to the container's termination message file, which the operator reads
from the pod status. SIGTERM (node drain, preemption) stops the build as an
infrastructure error, leaving nothing half-published. Called by ``trtop.cli``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from trtop import names
from trtop.api.fetch import FetchPolicy, redact
from trtop.convert.guard import PERMISSIVE
from trtop.convert.errors import (
    EXIT_INTERNAL_ERROR, EXIT_OK, BadRequestError, ConvertError, PreemptedError,
)

log = logging.getLogger("trtop.convert")

# TODO(names.py): move beside the other TRTOP_* variables once names.py is free to edit.
ENV_TERMINATION_LOG = "TRTOP_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
TERMINATION_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes of the message


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trtop convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--request", metavar="FILE|-", help=f"engine request JSON (default: ${names.ENV_ENGINE_REQUEST})")
    p.add_argument("--store", metavar="URI", help=f"engine store: a path, file://, s3:// (default: the request's "
                                                 f"store_uri, then ${names.ENV_STORE_URI})")
    p.add_argument("--workdir", metavar="DIR", help="work folder to keep (default: a temporary one, removed)")
    p.add_argument("--print-digest", metavar="PATH", help="print the sha256 digest of a model file or folder, exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    flags = p.add_argument_group("request from flags (when there is no --request / env request)")
    flags.add_argument("--model", metavar="URI", help="model URI: path, file://, https://, s3://, gs://")
    flags.add_argument("--format", choices=["savedmodel", "keras", "onnx"], help="default: from the URI's suffix")
    flags.add_argument("--signature", default="serving_default", help="SavedModel signature name")
    flags.add_argument("--digest", help="refuse a model whose digest differs (sha256:<hex>)")
    flags.add_argument("--target", default="cpu", help="cpu, or a compute capability with optional product: "
                                                      "9.0, 8.9/NVIDIA-L4")
    flags.add_argument("--backend", choices=["tensorrt", "onnxruntime"], help="default: onnxruntime for cpu")
    flags.add_argument("--precision", default="fp32", help="fp32, fp16, bf16, int8, fp8")
    flags.add_argument("--batch", default="1,8,32", metavar="MIN,OPT,MAX", help="batch profile (default 1,8,32)")
    flags.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                       help="fill open input dims (repeatable; -1 for the batch)")
    flags.add_argument("--method", default="onnx", help="onnx (default) or tf-trt")
    flags.add_argument("--workspace-mib", type=int, default=4096)
    flags.add_argument("--hardware-compatibility", default="none",
                       help="none, same-compute-capability, ampere-plus")
    flags.add_argument("--builder-option", action="append", metavar="KEY=VALUE", help="repeatable")
    flags.add_argument("--sample-data", metavar="URI", help=".npz with one array per input, for verification")
    flags.add_argument("--calibration-data", metavar="URI", help=".npz for int8/fp8 calibration")
    flags.add_argument("--scope", default="cli", help="store scope part of the key (the operator uses the "
                                                       "namespace; give --store the scope's own folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging(args.verbose)
    if args.print_digest:
        from trtop.convert.source import digest_of

        print(digest_of(Path(args.print_digest)))
        return EXIT_OK
    return run(args, os.environ)


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Build (or reuse) one engine; always leave a termination summary behind."""
    # In a pod the kubelet mounts the default file; elsewhere (a laptop) write nothing unless asked to.
    termination = env.get(ENV_TERMINATION_LOG) or (
        DEFAULT_TERMINATION_LOG if os.path.exists(DEFAULT_TERMINATION_LOG) else "")
    summary: dict[str, Any]
    try:
        with _stop_on_sigterm():
            from trtop.convert.pipeline import convert
            from trtop.convert.request import read_request
            from trtop.store import open_store

            request = read_request(args, env)
            policy = fetch_policy(env)
            log.info("engine %s: %s (%s) -> target %s, backend %s, precision %s, store %s", request.key,
                     request.model.uri, request.model.format, request.target, request.backend, request.precision,
                     request.store_uri)
            try:
                store = open_store(request.store_uri)
            except ValueError as e:
                raise BadRequestError(str(e)) from e
            with _workdir(args.workdir) as workdir:
                outcome = convert(request, store, workdir, policy=policy)
        record = outcome.record
        summary = {
            "ok": True, "key": outcome.key, "reused": outcome.reused, "store": request.store_uri,
            "artifact": record.artifact, "target": str(record.target), "backend": record.backend,
            "precision": record.precision, "parity": dict(record.parity), "build_seconds": record.build_seconds,
            "stages": outcome.stages,
        }
        code = EXIT_OK
        log.info("done: engine %s %s", outcome.key, "reused" if outcome.reused else "built and published")
    except ConvertError as e:
        code = e.exit_code
        summary = {"ok": False, "class": e.kind, "exit_code": code, "stage": e.stage, "error": redact(e.message)}
        log.error("%s error%s: %s", e.kind, f" in stage {e.stage}" if e.stage else "", e.message)
    except Exception as e:  # a bug: say so, keep the traceback in the log
        code = EXIT_INTERNAL_ERROR
        summary = {"ok": False, "class": "internal", "exit_code": code, "error": redact(f"{type(e).__name__}: {e}")}
        log.exception("internal error (a bug in trtop convert; please report it)")
    write_termination_message(termination, summary)
    return code


def fetch_policy(env: Mapping[str, str]) -> FetchPolicy:
    """The operator's policy (``TRTOP_FETCH_POLICY``); in a build Job without one, the strict default;
    run by hand (no request in the env), anything the person may read."""
    text = env.get(names.ENV_FETCH_POLICY, "")
    if text:
        try:
            return FetchPolicy.from_json(text)
        except (ValueError, TypeError) as e:
            raise BadRequestError(f"{names.ENV_FETCH_POLICY} is not a valid fetch policy: {e}") from e
    return FetchPolicy() if env.get(names.ENV_ENGINE_REQUEST) else PERMISSIVE


def write_termination_message(path: str, summary: Mapping[str, Any]) -> None:
    """Write the JSON summary where Kubernetes reads the termination message (trimmed to fit)."""
    if not path:
        return
    data = dict(summary)
    text = json.dumps(data, sort_keys=True)
    if len(text.encode()) > TERMINATION_LIMIT:
        data.pop("stages", None)
        if "error" in data:
            data["error"] = str(data["error"])[:TERMINATION_LIMIT // 2] + " ..."
        text = json.dumps(data, sort_keys=True)[:TERMINATION_LIMIT]
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        log.debug("no termination message written to %s (%s): not in a pod?", path, e.strerror)


@contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="trtop-convert-") as tmp:
        yield Path(tmp)


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises PreemptedError where the build is, so temp folders are removed on the way out."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise PreemptedError("stopped by SIGTERM (node drain, preemption or Job deletion); nothing was published")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests calling run() from a worker): no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RedactingFilter(logging.Filter):
    """Credentials in URIs never reach the log (or the log-fallback termination message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
