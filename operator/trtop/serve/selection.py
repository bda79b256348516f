"""Which engine of the engine set this pod runs: the one whose target matches the local device.

The operator passes every servable engine in ``TRTOP_ENGINE_SET`` (one Deployment spans
several GPU architectures); each pod picks its own at start-up, like Triton's
``cc_model_filenames``. Preference: an engine built for this exact GPU product, then
one built for this compute capability, then a CPU (ONNX Runtime) engine, which runs
anywhere. No match is a start-up failure whose message lists both sides.
Pure functions; called by ``source``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trtop.api.engine import EngineKey, EngineRecord
from trtop.api.targets import Target, target_matches_device
from trtop.serve.device import Device
from trtop.serve.errors import StartupError


@dataclass(frozen=True)
class EngineChoice:
    """One entry of the engine set: the planner's ``{key, target, backend, artifact}``."""

    key: EngineKey
    target: Target
    backend: str
    artifact: str

    @classmethod
    def of_record(cls, record: EngineRecord) -> EngineChoice:
        return cls(record.key, record.target, record.backend, record.artifact)

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
        if isinstance(entry, str) and entry:
            out.append(EngineKey(entry))
            continue
        if not isinstance(entry, dict):
            raise StartupError(f"TRTOP_ENGINE_SET[{i}] is {entry!r}: expected an object or an engine key")
        try:
            out.append(EngineChoice(EngineKey(str(entry["key"])), Target.from_dict(entry["target"]),
                                    str(entry["backend"]), str(entry["artifact"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise StartupError(
                f"TRTOP_ENGINE_SET[{i}] is not a valid engine entry ({exc!r}); each needs key, "
                "target {cc, product}, backend and artifact"
            ) from None
    return out


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
