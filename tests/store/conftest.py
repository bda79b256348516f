"""Store fixtures: a real S3-compatible server (moto in server mode, over HTTP) and sample engine folders."""
from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trtop import names
from trtop.api.engine import BatchProfile, EngineKey, EngineRecord, TensorSpec
from trtop.api.targets import Target
from trtop.store import EngineStore


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server for the session (as moto's ThreadedMotoServer, conditional writes made atomic);
    each test gets its own bucket."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, _AtomicConditionalWrites(DomainDispatcherApplication(create_backend_app)),
                         threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}"
    server.shutdown()
    thread.join()


class _AtomicConditionalWrites:
    """moto checks ``If-None-Match``/``If-Match`` and then writes, with no lock between: two racing
    ``engine.json`` commits could both succeed (seen once in CI), which S3 itself never allows (its
    conditional writes are atomic). So the test server runs conditional requests one at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ:
            with self.lock:
                return list(self.app(environ, start_response))  # the whole answer inside the lock
        return self.app(environ, start_response)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_* variables pointing boto3 at the test server (as the chart's store Secret would)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_endpoint


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    from trtop.store.s3 import s3_client

    name = f"engines-{uuid.uuid4().hex[:10]}"
    s3_client().create_bucket(Bucket=name)
    return name


def race_publish(store: EngineStore, key: str, folders: list[Path]) -> list[bool]:
    """Publish every folder as ``key`` at once, one thread each (builds racing); their results."""
    results: list[bool] = []
    barrier = threading.Barrier(len(folders))

    def build(folder: Path) -> None:
        barrier.wait()
        results.append(store.publish(EngineKey(key), folder))

    threads = [threading.Thread(target=build, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def make_record(key: str, artifact: str = "model.onnx", payload: bytes = b"onnx-bytes") -> EngineRecord:
    return EngineRecord(
        key=EngineKey(key), target=Target.parse("cpu"), backend="onnxruntime", artifact=artifact,
        precision="fp32", batch=BatchProfile(1, 4, 8),
        inputs=(TensorSpec("x", "float32", (-1, 4)),), outputs=(TensorSpec("y", "float32", (-1, 2)),),
        model_digest="sha256:" + "0" * 64, versions={"converter": "1"}, parity={"max_abs_error": 0.0},
        benchmark={}, build_seconds=1.5, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload),
    )


def make_engine_folder(root: Path, key: str, payload: bytes = b"onnx-bytes") -> Path:
    """A built folder as the converter leaves it: artifact, a nested extra file, engine.json."""
    folder = root / f"build-{uuid.uuid4().hex[:6]}"
    (folder / "extra").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(payload)
    (folder / "extra" / "notes.txt").write_text("nested files travel too")
    (folder / names.ENGINE_METADATA_FILE).write_text(make_record(key, payload=payload).to_json())
    return folder
