"""Tiny ONNX models, engine folders and a real ``trtop serve`` process for the server tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtop import names
from trtop.api.engine import BatchProfile, EngineKey, EngineRecord, TensorSpec
from trtop.api.targets import Target
from trtop.serve.types import Feeds, Outputs
from trtop.store.integrity import artifact_digest

REPO = Path(__file__).resolve().parents[2]


def make_affine_onnx(path: Path, width: int = 4, batch: int | str = "batch") -> Path:
    """y = 2x + 1 and s = sum(x, axis=1): outputs that reveal whose input a row came from."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [batch, 1])
    consts = [numpy_helper.from_array(np.array(2, np.float32), "two"),
              numpy_helper.from_array(np.array(1, np.float32), "one"),
              numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Add", ["m", "one"], ["y"]),
             helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1)]
    model = helper.make_model(helper.make_graph(nodes, "affine", [x], [y, s], consts),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_sequence_onnx(path: Path) -> Path:
    """x: [batch, -1] int64 -> y = x * 3 (a dynamic second dim: requests of different lengths)."""
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", "len"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "len"])
    three = numpy_helper.from_array(np.array(3, np.int64), "three")
    model = helper.make_model(helper.make_graph([helper.make_node("Mul", ["x", "three"], ["y"])], "seq", [x], [y],
                                                [three]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def affine_record(key: str = "e-0123456789abcdef", target: Target = Target.parse("cpu"), max_batch: int = 16,
                  backend: str = "onnxruntime", artifact: str = "model.onnx") -> EngineRecord:
    return EngineRecord(
        key=EngineKey(key), target=target, backend=backend, artifact=artifact,  # type: ignore[arg-type]
        precision="fp32", batch=BatchProfile(1, min(8, max_batch), max_batch),
        inputs=(TensorSpec("x", "float32", (-1, 4)),), outputs=(TensorSpec("y", "float32", (-1, 4)),
                                                               TensorSpec("s", "float32", (-1, 1))),
        model_digest="sha256:00", versions={"onnxruntime": "1.32"}, parity={}, benchmark={}, build_seconds=1.0,
        sha256="0" * 64, size=0,  # make_engine_dir fills in the real ones
    )


def make_engine_dir(root: Path, record: EngineRecord) -> Path:
    """The store layout for one key: <root>/<key>/engine.json + the artifact."""
    folder = root / record.key
    folder.mkdir(parents=True)
    make_affine_onnx(folder / record.artifact)
    sha256, size = artifact_digest(folder / record.artifact)
    (folder / names.ENGINE_METADATA_FILE).write_text(replace(record, sha256=sha256, size=size).to_json())
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m trtop.cli serve ...`` on a free port; logs kept for failure messages."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = (log_dir or Path("/tmp")) / f"trtop-serve-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRTOP_")}
        # Python front-ends unless a test asks for the native one (a trtop-http on a developer's PATH
        # must not change what the other tests run).
        full_env.update({"TRTOP_DEVICE": "cpu", "TRTOP_THREADS": "1", "TRTOP_INSTANCES": "1", "TRTOP_GRPC_PORT": "0",
                         "TRTOP_HTTP_FRONTEND": "python", **(env or {})})
        cmd = [sys.executable, "-m", "trtop.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_live(self, timeout: float = 30.0) -> None:
        self._wait("/v2/health/live", timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._wait("/v2/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{path} not 200 within {timeout}s:\n{self.logs()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout}s:\n{self.logs()}") from None

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def affine_onnx(tmp_path: Path) -> Path:
    return make_affine_onnx(tmp_path / "affine.onnx")


@pytest.fixture(scope="session")
def native_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding trtop-http, built from native/http for this session (needs Go)."""
    from trtop_dev.native import build_http_frontend, go

    if go() is None:
        pytest.skip("Go is not installed: the native HTTP front-end cannot be built")
    return build_http_frontend(tmp_path_factory.mktemp("native")).parent


def native_env(native_bin: Path) -> dict[str, str]:
    """What a server needs to run the native front-end built by ``native_bin``."""
    return {"TRTOP_HTTP_FRONTEND": "native", "PATH": f"{native_bin}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with ``start_server(args, env)``; all are killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(args: Sequence[str], env: Mapping[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(args, env, tmp_path)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def cmdline(pid: str | int) -> str:
    """A process's command line; "" once it has gone (a child listed a moment ago may have exited since)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return ""


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample from Prometheus exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            got = series[len(name):].strip("{}")
            if all(part in got.split(",") for part in want.split(",") if part):
                return float(value)
    return 0.0


class Recorder:
    """A runtime that records the batch sizes it ran."""

    inputs = (TensorSpec("x", "float32", (-1, 2)),)
    outputs = (TensorSpec("y", "float32", (-1, 2)),)
    max_batch = None
    platform = "fake"

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.prepared: list[int] = []

    def prepare(self, batch_sizes: Sequence[int]) -> None:
        self.prepared = list(batch_sizes)

    def run(self, feeds: Feeds, outputs: Sequence[str]) -> Outputs:
        self.rows.append(feeds["x"].shape[0])
        return {"y": feeds["x"] + 1}

    def close(self) -> None:
        pass
