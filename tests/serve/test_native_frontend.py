"""The native HTTP front-end (``native/http``, Go) in front of the real engine process.

Its own unit tests (``go test``: the arena, admission, routes, the channel's framing) run
first. Then real servers, one with Python front-ends and one with the native one, get the
same requests and must give the same answers: binary tensors on the native path, every
refusal (answered by the Python front-end it forwards to), JSON tensors, the metadata,
statistics and metrics routes; pipelined requests on one connection come back in order;
the engine's metrics count what the native path served; without the binary, ``native``
fails at start with what to do, and ``auto`` falls back to Python front-ends. Over gRPC the
same: the same request bytes get the same answer bytes from both (raw tensors on the native
path, everything else forwarded to the Python gRPC server), and a native front-end killed with
calls in flight is replaced while the other keeps serving (tests/serve/test_grpc.py runs its
whole suite against a native front-end too).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as tga
import tritonclient.http as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from trtop.serve import supervisor
from trtop.serve.frontend import ENV_FRONTEND
from trtop.serve.runtime import default_threads
from trtop_dev.native import SOURCE, go

from .conftest import ServerProcess, free_port, metric_value, native_env
from .test_direct_infer import binary, infer, outputs
from .test_frontends import SLOW, _read_answers, frontends, wait_for

Start = Callable[..., ServerProcess]


@pytest.mark.skipif(go() is None, reason="Go is not installed")
def test_go_unit_tests_pass() -> None:
    run = subprocess.run([str(go()), "test", "-count=1", "./..."], cwd=SOURCE, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


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


def _busy_go_threads(pid: int) -> int:
    """The Go threads a running native front-end was told to use while its gRPC calls overlap."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(ENV_FRONTEND.encode() + b"="):
            return int(json.loads(entry.split(b"=", 1)[1])["busy_go_threads"])
    raise AssertionError(f"{pid} has no {ENV_FRONTEND}")


@pytest.mark.slow
def test_grpc_only_front_ends_are_counted_as_set_and_grpc_ones_told_their_go_threads_for_overlapping_calls(
        start_server: Start, affine_onnx: Path, native_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    base = ["--model", str(affine_onnx), "--model-name", "a", "--frontends"]
    told = start_server(base + ["2", "--grpc-port", str(free_port()), "--grpc-only-frontends", "1",
                                "--grpc-go-threads", "3"], native_env(native_bin))
    default = start_server(base + ["1", "--grpc-port", str(free_port())], native_env(native_bin))
    no_grpc = start_server(base + ["1", "--grpc-port", "0"], native_env(native_bin))
    fixed = start_server(base + ["1", "--grpc-port", str(free_port())], {**native_env(native_bin), "GOMAXPROCS": "4"})
    for server, count in ((told, 3), (default, 2), (no_grpc, 1), (fixed, 2)):
        server.wait_ready()
        wait_for(lambda s=server, n=count: len(frontends(s, "native")) == n, 10, f"{count} native front-ends")
    assert "through 2 native front-end processes (and 1 more for gRPC" in told.logs()
    # every one starts with one Go thread; those that serve gRPC take more while their gRPC calls overlap
    assert [_go_threads(pid) for pid in frontends(told, "native")] == ["1", "1", "1"]
    assert [_busy_go_threads(pid) for pid in frontends(told, "native")] == [3, 3, 3]
    by_cores = supervisor.grpc_go_threads(0, default_threads())  # one on two cores or fewer (test_settings)
    assert [_busy_go_threads(pid) for pid in frontends(default, "native")] == [by_cores] * 2
    assert [_busy_go_threads(pid) for pid in frontends(no_grpc, "native")] == [0]
    # a GOMAXPROCS given to the server fixes every front-end's threads
    assert [_go_threads(pid) for pid in frontends(fixed, "native")] == ["4", "4"]
    assert [_busy_go_threads(pid) for pid in frontends(fixed, "native")] == [0, 0]


@pytest.mark.slow
async def test_a_native_front_end_takes_more_go_threads_only_once_grpc_calls_overlap(
        start_server: Start, affine_onnx: Path, native_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    port = free_port()
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--backend", SLOW,
                      "--grpc-port", str(port), "--grpc-only-frontends", "0", "--instances", "4",
                      "--grpc-go-threads", "2"],  # named: by default one on two cores or fewer
                     {"FAKE_RUN_DELAY_S": "0.3", **native_env(native_bin)})
    s.wait_ready()
    wait_for(lambda: len(frontends(s, "native")) == 1, 10, "one native front-end")
    [pid] = frontends(s, "native")

    def state_after_dump(n: int) -> str:
        s.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: s.logs().count(f"=== end of trtop-http {pid}") == n, 10, f"dump {n}")
        return re.findall(rf"=== trtop-http {pid}: .*", s.logs())[-1]

    async with tga.InferenceServerClient(f"127.0.0.1:{port}") as client:
        async def call(v: float) -> list[list[float]]:
            inp = tga.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(np.full((1, 4), v, np.float32))
            return (await client.infer("a", [inp], client_timeout=20)).as_numpy("y").tolist()

        for v in (1.0, 2.0):  # one at a time
            assert await call(v) == [[2 * v + 1] * 4]
        assert state_after_dump(1).endswith("Go threads 1 (2 while gRPC calls overlap, raised 0 times)")
        answers = await asyncio.gather(*(call(float(v)) for v in range(6)))  # on one connection, at once
        assert answers == [[[2 * v + 1.0] * 4] for v in range(6)]
        assert re.search(r"Go threads 2 \(2 while gRPC calls overlap, raised 1 times\)$", state_after_dump(2))
        await asyncio.sleep(1.6)  # more than a second (threads.go's goThreadsQuiet) without overlapping calls
        assert state_after_dump(3).endswith("Go threads 1 (2 while gRPC calls overlap, raised 1 times)")


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


# -- gRPC through the native front-end ------------------------------------------------------------

GRPC_METHOD = "/inference.GRPCInferenceService/"


@pytest.fixture
def grpc_pair(start_server: Start, affine_onnx: Path, native_bin: Path) -> tuple[str, str]:
    """gRPC addresses of the affine model ``a``: Python front-ends, then native ones answering gRPC."""
    addresses = []
    for env in (None, native_env(native_bin)):
        port = free_port()
        s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--max-batch", "8",
                          "--grpc-port", str(port), "--max-body-mb", "0.05"], env)
        s.wait_ready()
        addresses.append(f"127.0.0.1:{port}")
    return addresses[0], addresses[1]


def _raw_rpc(address: str, method: str, request: bytes) -> tuple[str, str, bytes]:
    """(status code, details, response bytes) of one unary call with the message's bytes as they are."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(GRPC_METHOD + method)
        try:
            return "OK", "", call(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or "", b""


@pytest.mark.slow
def test_the_native_front_end_answers_grpc_byte_for_byte_as_the_python_one(grpc_pair: tuple[str, str]) -> None:
    """The same request bytes get the same answer bytes (or code and message) from both: raw tensors on the
    native path, typed contents, every refusal and the other calls forwarded to the Python gRPC server."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    def infer(**fields: Any) -> bytes:
        req = service_pb2.ModelInferRequest(model_name="a", **fields)
        return req.SerializeToString()

    def tensor(shape: list[int], datatype: str = "FP32", name: str = "x", **more: Any) -> Any:
        return service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape, **more)

    def wanted(*names: str) -> list[Any]:
        return [service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in names]

    timeout = {"timeout": service_pb2.InferParameter(int64_param=5_000_000)}
    calls = {
        "all outputs": infer(inputs=[tensor([3, 4])], raw_input_contents=[x.tobytes()]),
        "id, version, s then y": infer(id="r-7", model_version="1", inputs=[tensor([3, 4])],
                                       raw_input_contents=[x.tobytes()], outputs=wanted("s", "y")),
        "one row, a timeout": infer(inputs=[tensor([1, 4])], raw_input_contents=[x[:1].tobytes()], parameters=timeout),
        "typed contents": infer(inputs=[tensor([1, 4], contents=service_pb2.InferTensorContents(
            fp32_contents=[1, 2, 3, 4]))]),
        "wrong shape": infer(inputs=[tensor([1, 3])], raw_input_contents=[bytes(12)]),
        "wrong datatype": infer(inputs=[tensor([1, 4], "FP64")], raw_input_contents=[bytes(32)]),
        "too many rows": infer(inputs=[tensor([9, 4])], raw_input_contents=[bytes(144)]),
        "size disagrees": infer(inputs=[tensor([1, 4])], raw_input_contents=[bytes(12)]),
        "unknown input": infer(inputs=[tensor([1, 4], name="z")], raw_input_contents=[bytes(16)]),
        "unknown output": infer(inputs=[tensor([1, 4])], raw_input_contents=[bytes(16)], outputs=wanted("w")),
        "no inputs": infer(),
        "bad timeout": infer(inputs=[tensor([1, 4])], raw_input_contents=[bytes(16)],
                             parameters={"timeout": service_pb2.InferParameter(string_param="soon")}),
        "another model": service_pb2.ModelInferRequest(model_name="b", inputs=[tensor([1, 4])],
                                                       raw_input_contents=[bytes(16)]).SerializeToString(),
        "another version": infer(model_version="2", inputs=[tensor([1, 4])], raw_input_contents=[bytes(16)]),
        "not a message": b"\xff\xff\xff",
    }
    for what, request in calls.items():
        python, native = (_raw_rpc(address, "ModelInfer", request) for address in grpc_pair)
        assert native == python, what
    ok = service_pb2.ModelInferResponse.FromString(_raw_rpc(grpc_pair[1], "ModelInfer", calls["all outputs"])[2])
    np.testing.assert_array_equal(np.frombuffer(ok.raw_output_contents[0], np.float32).reshape(3, 4), 2 * x + 1)
    for method, request in (("ServerLive", b""), ("ServerReady", b""), ("ModelReady", b"\n\x01a"),
                            ("ModelMetadata", b"\n\x01a"), ("ModelConfig", b"\n\x01a"),
                            ("ServerMetadata", b""), ("ModelReady", b"\n\x01b"), ("RepositoryIndex", b"")):
        python, native = (_raw_rpc(address, method, request) for address in grpc_pair)
        assert native == python, method
    assert _raw_rpc(grpc_pair[1], "ServerReady", b"")[2] == b"\x08\x01"  # ready=true


@pytest.mark.slow
async def test_a_killed_native_grpc_front_end_is_replaced_and_the_other_keeps_serving(
        start_server: Start, affine_onnx: Path, native_bin: Path) -> None:
    port = free_port()
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2", "--backend", SLOW,
                      "--grpc-port", str(port)], {"FAKE_RUN_DELAY_S": "0.3", **native_env(native_bin)})
    s.wait_ready()
    # two that accept HTTP and gRPC, two more for gRPC alone (processes.GRPC_ONLY_PER_NATIVE)
    wait_for(lambda: len(frontends(s, "native")) == 4, 10, "four native front-ends")
    assert "through 2 native front-end processes (and 2 more for gRPC" in s.logs()
    address = f"127.0.0.1:{port}"

    async def infer_each_on_its_own_connection(values: list[float]) -> list[object]:
        async def one(v: float) -> object:
            async with tga.InferenceServerClient(address) as c:
                inp = tga.InferInput("x", [1, 4], "FP32")
                inp.set_data_from_numpy(np.full((1, 4), v, np.float32))
                return (await c.infer("a", [inp], client_timeout=20)).as_numpy("y")
        return await asyncio.gather(*(one(v) for v in values), return_exceptions=True)

    victim = frontends(s, "native")[0]
    in_flight = asyncio.ensure_future(infer_each_on_its_own_connection([float(i) for i in range(8)]))
    await asyncio.sleep(0.15)
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.wait_for(in_flight, 25)  # nothing hangs: each answered or its connection dropped
    for i, r in enumerate(results):  # those the victim held end UNAVAILABLE; the survivor's are answered
        assert (isinstance(r, InferenceServerException) and "UNAVAILABLE" in str(r.status())) or \
            (isinstance(r, np.ndarray) and r.tolist() == [[2 * i + 1.0] * 4]), r
    later = await infer_each_on_its_own_connection([1.0] * 6)  # the survivor, then the replacement
    assert all(isinstance(r, np.ndarray) and r.tolist() == [[3.0] * 4] for r in later), later
    wait_for(lambda: len(frontends(s, "native")) == 4 and victim not in frontends(s, "native"), 15,
             "a replacement front-end")
    assert s.proc.poll() is None


def test_sigusr1_dumps_the_engines_state_then_each_front_ends_and_serving_goes_on(
        start_server: Start, affine_onnx: Path, native_bin: Path) -> None:
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2", "--group-limit", "5",
                      "--small-group-limit", "2"], native_env(native_bin))
    s.wait_ready()
    wait_for(lambda: len(frontends(s, "native")) == 2, 10, "two native front-ends")
    natives, pythons = frontends(s, "native"), frontends(s, "python")
    s.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: s.logs().count("=== end of trtop-http") == 2, 10, "both native front-ends' dumps")
    logs = s.logs()
    assert re.search(rf"state: engine {s.proc.pid}: model ready; requests queued 0 \(0 rows, the oldest for 0\.000s\); "
                     r"batches running 0 of 1; batch worker running; batches run \d+; reading descriptors on; "
                     r"requests at the engine by front-end \{0: 0, 1: 0, 2: 0\}", logs), logs[-3000:]
    assert "Thread 0x" in logs and "dump_state" in logs  # every engine thread's stack (faulthandler)
    for pid in natives:
        assert re.search(rf"=== trtop-http {pid}: model ready; descriptors at the engine 0 \(bound 5, small requests 2\); "
                         r"requests waiting here 0 \(the oldest for 0\.000s\)", logs), logs[-3000:]
        assert f"=== end of trtop-http {pid}" in logs
    for pid in [s.proc.pid, *pythons]:  # the Python front-end the native ones forward to was sent it too
        wait_for(lambda: f"=== end of the stacks of process {pid}" in s.logs(), 10, f"process {pid}'s stacks")
    for pid in pythons:
        assert f"state: Python front-end {pid}: model ready; requests awaiting the engine 0; answers lost 0" in s.logs()
    assert frontends(s, "native") == natives and frontends(s, "python") == pythons  # nobody died of the signal
    r = httpx.post(s.url + "/v2/models/a/infer", timeout=10,
                   json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3, 5, 7, 9]


@pytest.mark.slow
# declared: what four of fill the front-end's 64 MiB whole (the native one places a body after its JSON header's
# padding to a cache line, 28 bytes for a 100-byte header, in its arena; Python counts the declared bytes)
@pytest.mark.parametrize("frontend,declared", [("native", 16 * 1024 * 1024 - 64), ("python", 16 * 1024 * 1024)])
def test_connections_that_declare_the_largest_body_and_send_nothing_leave_room_for_small_requests(
        start_server: Start, affine_onnx: Path, native_bin: Path, frontend: str, declared: int) -> None:
    """A body's room is taken from its declared length before it arrives and held up to the body timeout: four
    connections that declared 16 MiB each and sent nothing held a front-end's 64 MiB, and every request meanwhile
    was refused 503. Now a quarter of the room (at most half the largest body) is only for bodies no larger than it."""
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--max-body-mb", "16",
                      "--max-inflight-mb", "64", "--http-frontend", frontend],
                     native_env(native_bin) if frontend == "native" else None)
    s.wait_ready()
    wait_for(lambda: len(frontends(s, frontend)) == 1, 10, f"the {frontend} front-end")
    x = np.full((2, 4), 3.0, np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()

    def small() -> int:
        return httpx.post(s.url + "/v2/models/a/infer", content=header + x.tobytes(), timeout=30,
                          headers={"Inference-Header-Content-Length": str(len(header))}).status_code

    assert small() == 200
    idle = []
    try:
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            sock.sendall(b"POST /v2/models/a/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                         b"Inference-Header-Content-Length: 100\r\n\r\n{" % declared)
            idle.append(sock)
        time.sleep(0.5)  # each holds its room by now
        assert [small() for _ in range(5)] == [200] * 5
    finally:
        for sock in idle:
            sock.close()
