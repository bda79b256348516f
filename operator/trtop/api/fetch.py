"""What a build Job may fetch (the operator's fetch policy) and how URIs are shown without their secrets.

``FetchPolicy`` travels from the operator's settings to every build Job as JSON in
``TRTOP_FETCH_POLICY``; the converter enforces it for the model, calibration and sample
data URIs (``trtop.convert.source``). Defaults: https, s3, gs, and file paths only under
the model mount; private, loopback and link-local addresses refused unless a network is
listed; byte caps on downloads and on unpacked archives; one deadline per fetch.

``redact`` removes credentials from any text that may hold a URI (``user:pass@``,
presigned query strings, tokens) before it reaches a log line, a status message, an
Event or a termination message. Pure; used by the converter, the planner and the operator.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

MODEL_MOUNT_ROOT = "/mnt/models"  # pvc://<claim>/<path> is mounted here in build Jobs
GiB = 1 << 30


@dataclass(frozen=True)
class FetchPolicy:
    # URI schemes a ModelDeployment may use for its model / calibration / sample data.
    schemes: tuple[str, ...] = ("https", "s3", "gs", "file")
    # Hosts https:// URIs may name ("models.example.com" or "*.example.com"); empty = any public host.
    hosts: tuple[str, ...] = ()
    # Networks (CIDR) allowed although private, loopback or link-local (e.g. an in-cluster MinIO).
    private_networks: tuple[str, ...] = ()
    # Folders file:// paths must lie in (after resolving links).
    file_roots: tuple[str, ...] = (MODEL_MOUNT_ROOT,)
    # Bytes one fetch may download, and bytes an archive may unpack to.
    max_bytes: int = 16 * GiB
    max_extracted_bytes: int = 16 * GiB
    # Files an archive (or an s3:// / gs:// folder) may hold.
    max_files: int = 100_000
    # Seconds one fetch may take, retries included.
    deadline_seconds: float = 3600.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FetchPolicy:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("the fetch policy must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = set(doc) - set(known)
        if unknown:
            raise ValueError(f"fetch policy: unknown fields {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, value in doc.items():
            default = getattr(cls(), name)
            values[name] = tuple(str(v) for v in value) if isinstance(default, tuple) else type(default)(value)
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = "TRTOP_FETCH_") -> FetchPolicy:
        """From ``TRTOP_FETCH_SCHEMES`` (comma lists), ``..._MAX_BYTES`` ... (the operator's settings).

        ``file_roots`` is not a setting: it is where build Jobs mount the model (``MODEL_MOUNT_ROOT``).
        """
        d = cls()
        values: dict[str, Any] = {}
        for f in env_fields():
            raw = env.get(prefix + f.name.upper())
            if raw is None or raw == "":
                continue
            default = getattr(d, f.name)
            if isinstance(default, tuple):
                values[f.name] = tuple(p.strip() for p in raw.split(",") if p.strip())
                continue
            try:  # the byte and file caps are integers, the deadline a number of seconds: each above 0
                number = type(default)(raw.strip())
            except ValueError:
                number = None
            if number is None or not math.isfinite(number) or number <= 0:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise ValueError(f"{prefix}{f.name.upper()}={raw!r}: {kind} above 0 is needed")
            values[f.name] = number
        return cls(**values)


def env_fields() -> list[Any]:
    """The policy fields the operator's settings may change (all but ``file_roots``)."""
    return [f for f in fields(FetchPolicy) if f.name != "file_roots"]


# user:password@ in a URL's authority.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s?#]+@")
# query parameters and key=value pairs that carry secrets (presigned URLs, SAS tokens, API keys).
_SECRET_PARAM = re.compile(
    r"(?i)([?&;,\s]|^)((?:x-amz-|x-goog-)?(?:signature|sig|credential|security-token|token|access[_-]?token|"
    r"api[_-]?key|key|password|passwd|secret|se|sp|sv|st)=)[^&\s#\"',]*"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[a-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with credentials in URIs replaced by ``REDACTED`` (safe on any text, idempotent)."""
    text = _USERINFO.sub(r"\1REDACTED@", text)
    text = _SECRET_PARAM.sub(r"\1\2REDACTED", text)
    return _BEARER.sub(r"\1REDACTED", text)
