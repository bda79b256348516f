"""The native HTTP front-end (``native/http``, Go) in front of the real engine process.

Its own unit tests (``go test``: the arena, admission, routes, the channel's framing) run
first. Then real servers, one with Python front-ends and one with the native one, get the
same requests and must give the same answers: binary tensors on the native path, every
refusal (answered by the Python front-end it forwards to), JSON tensors, the metadata,
statistics and metrics routes; pipelined requests on one connection come back in order;
the engine's metrics count what the native path served; without the binary, ``native``
fails at start with what to do, and ``auto`` falls back to Python front-ends.
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from trtop.serve.errors import StartupError
from trtop.serve.settings import ServeSettings
from trtop.serve.supervisor import native_binary
from trtop_dev.native import SOURCE, go

from .conftest import ServerProcess, metric_value, native_env
from .test_direct_infer import binary, infer, outputs
from .test_frontends import _read_answers, frontends, wait_for

Start = Callable[..., ServerProcess]


@pytest.mark.skipif(go() is None, reason="Go is not installed")
def test_go_unit_tests_pass() -> None:
    run = subprocess.run([str(go()), "test", "-count=1", "./..."], cwd=SOURCE, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


def test_native_is_used_when_installed_and_a_missing_binary_is_an_error_only_when_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert native_binary(ServeSettings(http_frontend="auto")) is None
    with pytest.raises(StartupError, match="trtop-http is not on PATH"):
        native_binary(ServeSettings(http_frontend="native"))
    exe = tmp_path / "trtop-http"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert native_binary(ServeSettings(http_frontend="auto")) == str(exe)
    assert native_binary(ServeSettings(http_frontend="python")) is None
    assert native_binary(ServeSettings()) is None  # Python front-ends unless asked (docs/server.md says why)


@pytest.fixture
def pair(start_server: Start, affine_onnx: Path, native_bin: Path) -> tuple[ServerProcess, ServerProcess]:
    """The affine model (y = 2x + 1, s = the row sums of x) as ``a``: Python front-ends, then the native one."""
    args = ["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--max-batch", "8"]
    python, native = start_server(args), start_server(args, native_env(native_bin))
    python.wait_ready()
    native.wait_ready()
    wait_for(lambda: len(frontends(native, "native")) == 1, 10, "the native front-end")
    return python, native


def _raw(port: int, payload: bytes, answers: int) -> list[tuple[bytes, bytes]]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        return _read_answers(sock, answers)


@pytest.mark.slow
def test_the_native_front_end_answers_as_the_python_one(pair: tuple[ServerProcess, ServerProcess]) -> None:
    python, native = pair
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    answers = {}
    for name, s in (("python", python), ("native", native)):
        client = triton.InferenceServerClient(f"127.0.0.1:{s.port}")
        inp = triton.InferInput("x", [3, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("a", [inp], request_id="r-1",
                              outputs=[triton.InferRequestedOutput("s"), triton.InferRequestedOutput("y")])
        np.testing.assert_array_equal(result.as_numpy("y"), 2 * x + 1)
        np.testing.assert_array_equal(result.as_numpy("s"), x.sum(axis=1, keepdims=True))
        answers[name] = result.get_response()
        client.close()
    assert answers["native"] == answers["python"]  # the same JSON header: names, shapes, order, id

    refusals = [
        ("unknown input", json.dumps({"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32",
                                                  "parameters": {"binary_data_size": 16}}]}).encode() + bytes(16), 1),
        ("wrong shape", *binary(np.ones((2, 4), np.float32), [2, 5])),
        ("wrong datatype", json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                                                   "parameters": {"binary_data_size": 32}}]}).encode() + bytes(32), 1),
        ("too many rows", *binary(np.ones((9, 4), np.float32))),
        ("size disagrees", json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                   "parameters": {"binary_data_size": 12}}]}).encode() + bytes(16), 1),
        ("JSON tensors", json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                 "data": [1, 2, 3, 4]}]}).encode(), None),
    ]
    for what, body, json_length in refusals:
        if json_length == 1:  # the header is the JSON before the zero bytes
            json_length = body.index(b"\x00")
        headers = {} if json_length is None else {"Inference-Header-Content-Length": str(json_length)}
        got = [httpx.post(s.url + "/v2/models/a/infer", content=body, headers=headers) for s in (python, native)]
        assert got[0].status_code == got[1].status_code and got[0].content == got[1].content, (what, got[1].text)
    assert got[1].status_code == 200 and got[1].json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]

    for path in ("/v2", "/v2/models/a", "/v2/models/a/config", "/v2/models/a/ready", "/v2/health/ready",
                 "/v2/health/live", "/v2/models/b", "/v2/models/a/versions/2/infer"):
        got = [httpx.get(s.url + path) for s in (python, native)]
        assert got[0].status_code == got[1].status_code and got[0].json() == got[1].json(), path
    stats = httpx.get(native.url + "/v2/models/a/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 2  # the native path's request reached the engine's statistics


@pytest.mark.slow
def test_pipelined_requests_on_one_connection_come_back_in_order_and_are_counted(
        pair: tuple[ServerProcess, ServerProcess]) -> None:
    _, native = pair
    before = metric_value(httpx.get(native.url + "/metrics").text, "trtop_inference_requests_total", model="a",
                          outcome="success")
    xs = [np.full((n, 4), v, np.float32) for n, v in ((1, 1.0), (3, 2.0), (8, 3.0), (2, 4.0))]
    bad = infer(np.ones((2, 4), np.float32), shape=[2, 5])
    answers = _raw(native.port, b"".join(infer(x) for x in xs[:2]) + bad + b"".join(infer(x) for x in xs[2:]), 5)
    for (head, payload), x in zip(answers[:2] + answers[3:], xs, strict=True):
        np.testing.assert_array_equal(outputs(head, payload, len(x)), 2 * x + 1)
    assert answers[2][0].startswith(b"HTTP/1.1 400 ") and b"does not match shape" in answers[2][1]

    def counted() -> bool:
        text = httpx.get(native.url + "/metrics").text
        return (metric_value(text, "trtop_inference_requests_total", model="a", outcome="success") == before + 4
                and metric_value(text, "trtop_inference_inflight_requests", model="a") == 0)
    wait_for(counted, 5, "the four answered requests counted and none left in flight")


def _go_threads(pid: int) -> str | None:
    """The GOMAXPROCS in a running process's environment (None: not set)."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(b"GOMAXPROCS="):
            return entry.split(b"=", 1)[1].decode()
    return None


@pytest.mark.slow
def test_each_native_front_end_runs_one_go_thread_unless_the_environment_says_otherwise(
        start_server: Start, affine_onnx: Path, native_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    args = ["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2"]
    default, told = start_server(args, native_env(native_bin)), start_server(args, {**native_env(native_bin),
                                                                                    "GOMAXPROCS": "3"})
    for server in (default, told):
        server.wait_ready()
        wait_for(lambda s=server: len(frontends(s, "native")) == 2, 10, "two native front-ends")
    assert [_go_threads(pid) for pid in frontends(default, "native")] == ["1", "1"]
    assert [_go_threads(pid) for pid in frontends(told, "native")] == ["3", "3"]
    assert _go_threads(default.proc.pid) is None  # the engine process's own environment is left as it was


@pytest.mark.slow
def test_without_the_binary_native_fails_at_start_and_auto_serves_with_python(
        start_server: Start, affine_onnx: Path, tmp_path: Path) -> None:
    path = f"{Path(shutil.which('python3') or '/usr/bin/python3').parent}"  # a PATH without trtop-http
    args = ["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1"]
    failed = start_server(args, {"TRTOP_HTTP_FRONTEND": "native", "PATH": path})
    assert failed.wait_exit(30) != 0
    assert "trtop-http is not on PATH" in failed.logs()
    auto = start_server(args, {"TRTOP_HTTP_FRONTEND": "auto", "PATH": path})
    auto.wait_ready()
    assert "through 1 Python front-end processes" in auto.logs()


@pytest.mark.slow
async def test_requests_grouped_while_the_engine_is_busy_each_get_their_own_rows_and_are_counted(
        start_server: Start, affine_onnx: Path, native_bin: Path) -> None:
    # One native front-end keeps two descriptors in flight (one instance + one queued); the engine takes
    # 0.3 s a batch, so most of the 24 requests wait in the front-end and leave as groups.
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--max-batch", "64",
                      "--backend", "tests.serve.fakes:SlowOnnxRuntime", "--log-level", "debug"], {**native_env(native_bin), "FAKE_RUN_DELAY_S": "0.3"})
    s.wait_ready()
    xs = [np.full((1 + i % 3, 4), float(i), np.float32) for i in range(24)]

    async def one(client: httpx.AsyncClient, x: np.ndarray) -> httpx.Response:
        body, json_length = binary(x)
        return await client.post("/v2/models/a/infer", content=body,
                                  headers={"Inference-Header-Content-Length": str(json_length)})

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=s.url, timeout=30, limits=limits) as client:
        answers = await asyncio.gather(*(one(client, x) for x in xs))
    for x, r in zip(xs, answers, strict=True):
        assert r.status_code == 200, r.text
        json_length = int(r.headers["inference-header-content-length"])
        header = json.loads(r.content[:json_length])
        assert [o["shape"] for o in header["outputs"]] == [[len(x), 4], [len(x), 1]]
        y = np.frombuffer(r.content[json_length:json_length + x.nbytes], np.float32).reshape(x.shape)
        np.testing.assert_array_equal(y, 2 * x + 1)  # its own rows of its group's answer
    stats = httpx.get(s.url + "/v2/models/a/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 24  # client requests, not the groups they left in
    assert stats["inference_count"] == sum(len(x) for x in xs)
    assert stats["execution_count"] < 12, "the requests should have run in a few batches"
    groups = [int(n) for n in re.findall(r"a group of (\d+) requests", s.logs())]
    assert groups and max(groups) > 1 and sum(groups) <= 24, groups
