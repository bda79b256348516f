"""Where the served model comes from: a raw model file, one engine folder, or the engine set + store.

``resolve_servable`` runs before the server listens (fast: reads settings, engine.json
files or store records, picks the engine for this device) so a pod with no usable
engine fails at once with a clear message. ``fetch_servable`` runs in the background
loader (it may download a large engine) and returns the local artifact path, once the
artifact's bytes match the sha256 its record pins and the one the operator pinned in the
engine set: a tampered or truncated artifact is refused with a message naming the key.
Records are read with the strict parser; an artifact path never leaves its engine folder.
Called by ``server``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from trtop import names
from trtop.api.engine import MAX_RECORD_BYTES, EngineKey, EngineRecord, RecordError, parse_record
from trtop.api.targets import Target
from trtop.serve.device import Device
from trtop.serve.errors import StartupError
from trtop.serve.runtime import guess_backend
from trtop.serve.selection import EngineChoice, choose_engine, parse_engine_set
from trtop.serve.settings import ServeSettings
from trtop.store import StoreError, open_store
from trtop.store.integrity import IntegrityError, artifact_path, verify_artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Servable:
    """The model this server will load, before it is fetched."""

    backend: str
    origin: str  # for logs and messages: "engine e-... from s3://..." / "model file ..."
    key: str = ""
    target: Target | None = None
    record: EngineRecord | None = None
    path: Path | None = None  # local artifact, when already local
    store_uri: str = ""  # else: fetch ``key`` from this store
    sha256: str = ""  # the artifact's sha256 as the engine set pins it ("" = the record's pin only)


def resolve_servable(settings: ServeSettings, device: Device) -> Servable:
    """Pick what to serve from the settings; StartupError says what is missing or mismatched."""
    override = "" if settings.backend == "auto" else settings.backend
    if settings.model_path:
        path = Path(settings.model_path)
        if not path.exists():
            raise StartupError(f"--model {path}: no such file or folder")
        return Servable(override or guess_backend(path), f"model file {path}", path=path)
    if settings.engine_dir:
        folder = Path(settings.engine_dir)
        record = _read_record(folder)
        choice = choose_engine([EngineChoice.of_record(record)], device)
        return Servable(override or choice.backend, f"engine {record.key} in {folder}", key=record.key,
                        target=record.target, record=record, path=_artifact_in(folder, record))
    if settings.engine_set:
        if not settings.store_uri:
            raise StartupError(f"{names.ENV_ENGINE_SET} is set but {names.ENV_STORE_URI} is not: "
                               "the server needs the engine store to fetch its engine from")
        store = open_store(settings.store_uri)
        entries: list[EngineChoice] = []
        for entry in parse_engine_set(settings.engine_set):
            if isinstance(entry, EngineChoice):
                entries.append(entry)
                continue
            record = _store_record(settings.store_uri, entry)
            entries.append(EngineChoice.of_record(record))
        choice = choose_engine(entries, device)
        log.info("device: %s; chose engine %s", device, choice)
        return Servable(override or choice.backend, f"engine {choice.key} from {settings.store_uri}",
                        key=choice.key, target=choice.target, store_uri=store.uri, sha256=choice.sha256)
    raise StartupError(
        "nothing to serve: pass --model PATH (an .onnx file or SavedModel), --engine-dir DIR (engine.json + "
        f"artifact), or set {names.ENV_ENGINE_SET} and {names.ENV_STORE_URI} (what the operator does)"
    )


def fetch_servable(servable: Servable, cache_dir: Path) -> tuple[Path, EngineRecord | None]:
    """The local artifact path (fetching the engine from the store when needed) and its record."""
    if servable.path is not None:
        if servable.record is not None:  # an engine folder: its bytes must match its record
            _checked_path(servable.path.parent, servable.record)
        return servable.path, servable.record
    store = open_store(servable.store_uri)
    key = EngineKey(servable.key)
    try:
        folder = store.fetch(key, cache_dir)
    except StoreError as exc:
        raise StartupError(f"could not fetch engine {servable.key} from {servable.store_uri}: {exc}") from exc
    record = _read_record(folder, key)
    return _checked_path(folder, record, servable.sha256), record


def _artifact_in(folder: Path, record: EngineRecord) -> Path:
    try:
        return artifact_path(folder, record)
    except IntegrityError as exc:
        raise StartupError(str(exc)) from None


def _checked_path(folder: Path, record: EngineRecord, pinned_sha256: str = "") -> Path:
    """The artifact path once its bytes match the record's (and the engine set's) sha256."""
    try:
        return verify_artifact(folder, record, pinned_sha256=pinned_sha256, origin=str(folder))
    except IntegrityError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"engine {record.key}: cannot read its artifact in {folder}: {exc}") from None


def _read_record(folder: Path, key: EngineKey | None = None) -> EngineRecord:
    meta = folder / names.ENGINE_METADATA_FILE
    try:
        with open(meta, "rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
        return parse_record(data, key=key, where=str(meta))
    except FileNotFoundError:
        raise StartupError(f"{meta} does not exist: an engine folder holds {names.ENGINE_METADATA_FILE} "
                           "and the artifact it names") from None
    except RecordError as exc:
        raise StartupError(f"{meta} is not a valid engine record: {exc}") from None


def _store_record(store_uri: str, key: EngineKey) -> EngineRecord:
    try:
        record = open_store(store_uri).get_record(key)
    except StoreError as exc:
        raise StartupError(f"could not read engine {key} from {store_uri}: {exc}") from exc
    if record is None:
        raise StartupError(f"engine {key} from {names.ENV_ENGINE_SET} is not published in {store_uri}")
    return record
