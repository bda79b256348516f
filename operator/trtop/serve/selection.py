"""Which engine of the engine set this pod runs: the one whose target matches the local device.

The operator passes its unit's engine in ``TRTOP_ENGINE_SET`` (a set of one: one serving
unit per GPU architecture); each pod still picks and checks its own at start-up, like Triton's
``cc_model_filenames``. Preference: an engine built for this exact GPU product, then
one built for this compute capability, then a CPU (ONNX Runtime) engine, which runs
anywhere. No match is a start-up failure whose message lists both sides.
Every entry is checked: a key, a backend from the server's fixed table (never an import
path: those come only from the server's own ``--backend``), one artifact name inside the
engine folder, and the artifact's sha256 the operator pinned from the record it read.
Pure functions; called by ``source``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trtop.api.engine import EngineKey, EngineRecord, is_artifact_name, is_engine_key
from trtop.api.targets import Target, target_matches_device
from trtop.serve.device import Device
from trtop.serve.errors import StartupError
from trtop.serve.runtime import BACKENDS

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class EngineChoice:
    """One entry of the engine set: the planner's ``{key, target, backend, artifact, sha256, size}``."""

    key: EngineKey
    target: Target
    backend: str
    artifact: str
    sha256: str = ""  # pinned by the operator; "" for a bare key (then the record's own pin holds)

    @classmethod
    def of_record(cls, record: EngineRecord) -> EngineChoice:
        return cls(record.key, record.target, record.backend, record.artifact, record.sha256)

    def __str__(self) -> str:
        return f"{self.key} for {self.target} ({self.backend})"


def parse_engine_set(text: str) -> list[EngineChoice | EngineKey]:
    """``TRTOP_ENGINE_SET``: a JSON list of entries (objects) or of engine keys (strings)."""
    try:
        doc: Any = json.loads(text)
    except ValueError as exc:
        raise StartupError(f"TRTOP_ENGINE_SET is not valid JSON ({exc}); expected a list of engines") from None
    if not isinstance(doc, list) or not doc:
        raise StartupError("TRTOP_ENGINE_SET must be a non-empty JSON list of engines or engine keys")
    out: list[EngineChoice | EngineKey] = []
    for i, entry in enumerate(doc):
        if isinstance(entry, str) and is_engine_key(entry):
            out.append(EngineKey(entry))
            continue
        if not isinstance(entry, dict):
            raise StartupError(f"TRTOP_ENGINE_SET[{i}] is {str(entry)[:80]!r}: expected an object or an engine key")
        try:
            choice = EngineChoice(EngineKey(str(entry["key"])), Target.from_dict(entry["target"]),
                                  str(entry["backend"]), str(entry["artifact"]), str(entry["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StartupError(
                f"TRTOP_ENGINE_SET[{i}] is not a valid engine entry ({exc!r}); each needs key, "
                "target {cc, product}, backend, artifact and sha256"
            ) from None
        problem = _problem(choice)
        if problem:
            raise StartupError(f"TRTOP_ENGINE_SET[{i}]: {problem}")
        out.append(choice)
    return out


def _problem(choice: EngineChoice) -> str:
    if not is_engine_key(choice.key):
        return f"key {choice.key[:40]!r} is not an engine key (e- and 16 hex digits)"
    if choice.backend not in BACKENDS:
        return (f"backend {choice.backend[:60]!r} is not one of {sorted(BACKENDS)}; an engine set never names "
                "other backends (a custom backend is given on the server's own command line, --backend)")
    if not is_artifact_name(choice.artifact):
        return f"artifact {choice.artifact[:60]!r} is not one file or folder name inside the engine folder"
    if not _SHA256.match(choice.sha256):
        return f"sha256 {choice.sha256[:70]!r} is not 64 lower-case hex digits"
    return ""


def choose_engine(entries: Sequence[EngineChoice], device: Device) -> EngineChoice:
    """The best engine for ``device``, or StartupError naming the device and every offered target."""
    def matches(e: EngineChoice) -> bool:
        return target_matches_device(e.target, device.cc, device.product)

    exact = [e for e in entries if e.target.product and matches(e)]
    same_cc = [e for e in entries if not e.target.product and matches(e)]
    cpu = [e for e in entries if e.target.is_cpu]
    for group in (exact, same_cc, cpu):
        if group:
            return group[0]
    offered = "; ".join(str(e) for e in entries) or "nothing"
    raise StartupError(
        f"no engine in the engine set runs on this device. Found: {device} (from {device.source}). "
        f"The set offers: {offered}. A TensorRT engine runs only on the compute capability (and, when built "
        "with hardware compatibility 'none', the GPU product) it was built for: add this GPU's target to "
        "spec.engine.targets so the operator builds one, or keep these pods off such nodes."
    )
