"""``trtop serve``'s gRPC protocol with the official ``tritonclient.grpc``, and the statistics extension.

A real server process per fixture (HTTP and gRPC on free ports, tiny ONNX models); every
implemented RPC, raw and typed tensor contents, errors with HTTP's messages mapped to
status codes, the statistics over HTTP and gRPC after some requests, and a drain with
RPCs in flight. Malformed requests the client library cannot produce go through the raw stub.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import ServerProcess, free_port, make_affine_onnx, native_env

pytestmark = pytest.mark.slow
SLOW = "tests.serve.fakes:SlowOnnxRuntime"
Start = Callable[..., ServerProcess]


def grpc_server(args: list[str], tmp: Path, env: dict[str, str] | None = None) -> tuple[ServerProcess, str]:
    port = free_port()
    return ServerProcess([*args, "--grpc-port", str(port)], env, tmp), f"127.0.0.1:{port}"


def frontend_args(request: pytest.FixtureRequest, kind: str) -> tuple[list[str], dict[str, str] | None]:
    """``--frontends`` for "0" and "1"; "native": one native front-end (trtop-http, built for the session)
    answering gRPC itself, in front of the Python gRPC server it forwards what it does not take to."""
    if kind == "native":
        return ["--frontends", "1"], native_env(request.getfixturevalue("native_bin"))
    return ["--frontends", kind], None


@pytest.fixture(scope="module", params=["0", "1", "native"], ids=["one-process", "front-end", "native"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """The affine model (y = 2x + 1, s = sum x): batches of up to 8, a 20 ms window, 50 KiB messages;
    gRPC in the one server process, in a front-end process in front of the engine process, or in a native
    front-end."""
    tmp = tmp_path_factory.mktemp("grpc")
    flags, env = frontend_args(request, request.param)
    s, address = grpc_server(["--model", str(make_affine_onnx(tmp / "affine.onnx")), "--model-name", "affine",
                              "--max-batch", "8", "--max-queue-delay-ms", "20", "--max-body-mb", "0.05",
                              *flags], tmp, env)
    try:
        s.wait_ready()
        yield s, address
    finally:
        s.stop()


@pytest.fixture
def client(served: tuple[ServerProcess, str]) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(served[1])
    yield c
    c.close()


@pytest.fixture
def stub(served: tuple[ServerProcess, str]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def x_input(x: np.ndarray, name: str = "x", datatype: str = "FP32") -> tg.InferInput:
    i = tg.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return i


def fails(call: Callable[[], Any]) -> tuple[str, str]:
    """The status code name and message of a call that must fail."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()).removeprefix("StatusCode."), info.value.message() or ""


def test_generated_descriptors_are_tritonclients_so_both_load_in_one_process() -> None:
    from trtop.serve.grpc.proto import grpc_service_pb2, model_config_pb2
    from tritonclient.grpc import model_config_pb2 as client_config
    assert grpc_service_pb2.DESCRIPTOR.serialized_pb == service_pb2.DESCRIPTOR.serialized_pb
    assert model_config_pb2.DESCRIPTOR.serialized_pb == client_config.DESCRIPTOR.serialized_pb


@pytest.mark.parametrize("request_id", [None, "", "r-7"])
def test_answers_built_as_bytes_are_the_messages_bytes(request_id: str | None) -> None:
    """ModelInfer's answer is serialized without a message object (a kept head + each output's bytes); it must
    be exactly what the message would serialize to, for any outputs, and the same again from the kept head."""
    from trtop.serve.grpc import wire

    wide = np.arange(24, dtype=np.float32).reshape(4, 6)
    outputs = [("y", wide[:, ::2]), ("ids", np.arange(3, dtype=np.int64)), ("none", np.zeros((0, 5), np.float16)),
               ("big", np.ones((2, 200), np.float64))]  # not contiguous, other types, empty, lengths past 127
    for _ in range(2):
        built = wire.infer_response_bytes("m", request_id, outputs)
        assert built == wire.infer_response("m", request_id, outputs).SerializeToString()
    parsed = service_pb2.ModelInferResponse.FromString(built)
    assert np.frombuffer(parsed.raw_output_contents[0], np.float32).reshape(4, 3).tolist() == wide[:, ::2].tolist()


class TestRPCs:
    def test_health_and_metadata(self, client: tg.InferenceServerClient) -> None:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("affine")
        assert client.is_model_ready("affine", "1")
        server = client.get_server_metadata(as_json=True)
        assert server["name"] == "trtop" and "statistics" in server["extensions"]
        meta = client.get_model_metadata("affine", as_json=True)
        assert (meta["name"], meta["versions"], meta["platform"]) == ("affine", ["1"], "onnxruntime_onnx")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]  # int64 as JSON strings
        assert [o["name"] for o in meta["outputs"]] == ["y", "s"]
        config = client.get_model_config("affine").config
        assert (config.name, config.max_batch_size, config.backend) == ("affine", 8, "onnxruntime")
        assert [(t.name, list(t.dims)) for t in config.input] == [("x", [4])]
        assert config.input[0].data_type == tg.model_config_pb2.TYPE_FP32
        assert config.dynamic_batching.max_queue_delay_microseconds == 20_000

    def test_infer_raw_tensors_all_and_chosen_outputs(self, client: tg.InferenceServerClient) -> None:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        result = client.infer("affine", [x_input(x)], request_id="r-1")
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2 + 1)
        np.testing.assert_array_equal(result.as_numpy("s"), x.sum(1, keepdims=True))
        response = result.get_response()
        assert (response.id, response.model_name, response.model_version) == ("r-1", "affine", "1")
        only_s = client.infer("affine", [x_input(x)], outputs=[tg.InferRequestedOutput("s")], model_version="1")
        assert only_s.as_numpy("y") is None
        np.testing.assert_array_equal(only_s.as_numpy("s"), [[6.0], [22.0], [38.0]])
        gzip = client.infer("affine", [x_input(x)], compression_algorithm="gzip")
        np.testing.assert_array_equal(gzip.as_numpy("y"), x * 2 + 1)

    def test_infer_typed_contents(self, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
        request = service_pb2.ModelInferRequest(model_name="affine", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="x", datatype="FP32", shape=[2, 4],
                contents=service_pb2.InferTensorContents(fp32_contents=[0, 1, 2, 3, 4, 5, 6, 7]))])
        response = stub.ModelInfer(request)
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("y", "FP32", [2, 4]),
                                                                                   ("s", "FP32", [2, 1])]
        assert np.frombuffer(response.raw_output_contents[1], np.float32).tolist() == [6.0, 22.0]

    def test_concurrent_requests_get_their_own_rows(self, served: tuple[ServerProcess, str]) -> None:
        async def run() -> None:
            async with tga.InferenceServerClient(served[1]) as c:
                inputs = [np.random.rand(1 + i % 3, 4).astype(np.float32) + i for i in range(24)]
                results = await asyncio.gather(*(c.infer("affine", [x_input(x)]) for x in inputs))
            for x, r in zip(inputs, results, strict=True):
                np.testing.assert_allclose(r.as_numpy("y"), x * 2 + 1, rtol=1e-6)

        asyncio.run(run())


class TestErrors:
    @pytest.mark.parametrize("x,name,datatype,code,match", [
        (np.ones((1, 4), np.float32), "z", "FP32", "INVALID_ARGUMENT", "unknown input 'z'"),
        (np.ones((1, 3), np.float32), "x", "FP32", "INVALID_ARGUMENT", "the model expects [-1, 4]"),
        (np.ones((1, 4), np.float64), "x", "FP64", "INVALID_ARGUMENT", "datatype FP64, the model expects FP32"),
        (np.ones((9, 4), np.float32), "x", "FP32", "INVALID_ARGUMENT", "max batch of 8"),
        (np.ones((4000, 4), np.float32), "x", "FP32", "RESOURCE_EXHAUSTED", "larger than max"),
    ])
    def test_admission_errors_say_what_is_wrong(self, client: tg.InferenceServerClient, x: np.ndarray, name: str,
                                                datatype: str, code: str, match: str) -> None:
        assert fails(lambda: client.infer("affine", [x_input(x, name, datatype)]))[0] == code
        assert match in fails(lambda: client.infer("affine", [x_input(x, name, datatype)]))[1]

    def test_model_and_version_not_found(self, client: tg.InferenceServerClient) -> None:
        x = x_input(np.ones((1, 4), np.float32))
        assert fails(lambda: client.infer("nope", [x])) == (
            "NOT_FOUND", "model 'nope' is not served here; this server serves 'affine'")
        code, message = fails(lambda: client.infer("affine", [x], model_version="2"))
        assert code == "NOT_FOUND" and "no version '2'" in message
        assert fails(lambda: client.get_model_metadata("nope"))[0] == "NOT_FOUND"
        assert fails(lambda: client.get_model_config("affine", "3"))[0] == "NOT_FOUND"
        assert fails(lambda: client.is_model_ready("nope"))[0] == "NOT_FOUND"
        outputs = [tg.InferRequestedOutput("w")]
        assert "unknown output 'w'" in fails(lambda: client.infer("affine", [x], outputs=outputs))[1]

    def test_rpcs_not_implemented_say_which_are(self, client: tg.InferenceServerClient) -> None:
        code, message = fails(client.get_model_repository_index)
        assert code == "UNIMPLEMENTED" and "RepositoryIndex is not implemented" in message and "ModelInfer" in message
        assert len(client.get_cuda_shared_memory_status().regions) == 0  # implemented: none ever registered
        code, message = fails(lambda: client.register_system_shared_memory("r", "/trtop-test", 16))
        assert code == "INVALID_ARGUMENT" and "--shared-memory system" in message  # off unless asked for

    @pytest.mark.parametrize("tensor,raw,match", [
        ({"datatype": "FP32", "shape": [1, 4], "contents": {"fp32_contents": [1, 2, 3]}}, [],
         "contents.fp32_contents has 3 values but shape [1, 4] of FP32 needs 4"),
        ({"datatype": "FP16", "shape": [1, 4], "contents": {}}, [], "FP16 tensors have no typed contents"),
        ({"datatype": "FP32", "shape": [1, 4]}, [b"\0" * 12], "raw_input_contents has 12 bytes but shape [1, 4]"),
        ({"datatype": "FP32", "shape": [1, 4], "contents": {"fp32_contents": [1, 2, 3, 4]}}, [b"\0" * 16],
         "both contents and raw_input_contents"),
        ({"datatype": "FP32", "shape": [1, 4]}, [b"\0" * 16, b"\0" * 16], "raw_input_contents has 2 entries for 1"),
        ({"datatype": "BYTES", "shape": [1]}, [b"abcd"], "datatype 'BYTES' is not supported"),
        ({"datatype": "FP32", "shape": [1, 4], "parameters": {"shared_memory_region": {"string_param": "r"}}},
         [], "system shared memory extension is off on this server"),
        ({"datatype": "FP32", "shape": [1, 4], "parameters": {"shared_memory_region": {"string_param": "r"}}},
         [b"\0" * 16], "raw_input_contents has 1 entries for 0 inputs"),
        ({"datatype": "FP32", "shape": [0, 2**62, 4]}, [b""], "shape [0, 4611686018427387904, 4] is beyond any tensor"),
        ({"datatype": "FP32", "shape": [0, 2**62, 4], "contents": {}}, [], "is beyond any tensor"),
        # numpy cannot shape 65 dimensions: its ValueError was answered UNKNOWN, with a traceback logged per call
        ({"datatype": "FP32", "shape": [1] * 65}, [b"\0" * 4], "shape has 65 dimensions; at most 32"),
    ])
    def test_malformed_tensors(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, tensor: dict[str, Any],
                               raw: list[bytes], match: str) -> None:
        request = service_pb2.ModelInferRequest(model_name="affine", raw_input_contents=raw, inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="x", **tensor)])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert match in info.value.details()

    @pytest.mark.parametrize("frontends", ["-1", "native"])
    def test_overload_unavailable_server_deadline_and_backend_failure(self, tmp_path: Path, frontends: str,
                                                                      request: pytest.FixtureRequest) -> None:
        flags, env = frontend_args(request, frontends)
        s, address = grpc_server(["--model", str(make_affine_onnx(tmp_path / "a.onnx")), "--model-name", "a",
                                  "--backend", SLOW, "--max-batch", "4", "--max-queue-size", "1",
                                  "--max-queue-delay-ms", "0", *flags], tmp_path,
                                 env={"FAKE_RUN_DELAY_S": "0.5", "FAKE_RUN_FAIL_VALUE": "-7", **(env or {})})
        try:
            s.wait_ready()
            asyncio.run(self._overload(address, held_by_frontend=frontends == "native"))
        finally:
            s.stop()

    async def _overload(self, address: str, held_by_frontend: bool) -> None:
        """A full queue refuses a call, a call past its timeout in the queue and a failing run are answered with
        their codes. A native front-end holds the calls beyond the engine's next batches itself and sends them
        as one group when there is room (``native/http/group.go``), so the engine's queue does not fill: the
        third call is answered (a native front-end's bound is its share of --max-inflight-mb)."""
        one = [x_input(np.ones((1, 4), np.float32))]
        async with tga.InferenceServerClient(address) as c:
            running = asyncio.ensure_future(c.infer("a", one))
            await asyncio.sleep(0.2)
            queued = asyncio.ensure_future(c.infer("a", one))
            await asyncio.sleep(0.1)
            if held_by_frontend:
                np.testing.assert_array_equal((await c.infer("a", one)).as_numpy("y"), np.full((1, 4), 3.0))
            else:
                with pytest.raises(InferenceServerException) as refused:
                    await c.infer("a", one)
                assert refused.value.status() == "StatusCode.UNAVAILABLE"
                assert "queue is full" in (refused.value.message() or "")
            await running
            await queued
            busy = asyncio.ensure_future(c.infer("a", one))
            await asyncio.sleep(0.1)
            with pytest.raises(InferenceServerException) as late:
                await c.infer("a", one, timeout=100_000)  # parameters.timeout, microseconds
            assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            assert "waited 0.1s in the queue" in (late.value.message() or "")
            await busy
            with pytest.raises(InferenceServerException) as broken:
                await c.infer("a", [x_input(np.full((3, 4), -7, np.float32))])
            assert broken.value.status() == "StatusCode.INTERNAL"
            assert "the backend failed to run this request" in (broken.value.message() or "")


    @pytest.mark.parametrize("frontends", ["-1", "native"])
    def test_calls_in_flight_are_capped_by_max_connections(self, tmp_path: Path, frontends: str,
                                                           request: pytest.FixtureRequest) -> None:
        flags, env = frontend_args(request, frontends)
        s, address = grpc_server(["--model", str(make_affine_onnx(tmp_path / "a.onnx")), "--model-name", "a",
                                  "--backend", SLOW, "--max-connections", "2", *flags], tmp_path,
                                 env={"FAKE_RUN_DELAY_S": "0.5", **(env or {})})
        try:
            s.wait_ready()

            async def run() -> None:
                one = [x_input(np.ones((1, 4), np.float32))]
                async with tga.InferenceServerClient(address) as c:
                    admitted = [asyncio.ensure_future(c.infer("a", one)) for _ in range(2)]
                    await asyncio.sleep(0.2)
                    with pytest.raises(InferenceServerException) as refused:
                        await c.infer("a", one)
                    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
                    await asyncio.gather(*admitted)

            asyncio.run(run())
        finally:
            s.stop()


class TestStatistics:
    def test_counts_over_http_and_grpc_after_requests_and_a_bad_one(self, served: tuple[ServerProcess, str],
                                                                    client: tg.InferenceServerClient) -> None:
        s = served[0]
        http = th.InferenceServerClient(s.url.removeprefix("http://"))
        before = http.get_inference_statistics("affine")["model_stats"][0]
        started_ms = time.time() * 1000
        rows = [1, 2, 3, 1]
        for n in rows:
            client.infer("affine", [x_input(np.ones((n, 4), np.float32))])
        fails(lambda: client.infer("affine", [x_input(np.ones((1, 4), np.float64), datatype="FP64")]))

        after = http.get_inference_statistics("affine")["model_stats"][0]
        assert (after["name"], after["version"]) == ("affine", "1")
        delta = {k: {f: after["inference_stats"][k][f] - before["inference_stats"][k][f] for f in ("count", "ns")}
                 for k in ("success", "fail", "queue", "compute_infer")}
        assert after["inference_count"] - before["inference_count"] == sum(rows)
        assert 1 <= after["execution_count"] - before["execution_count"] <= len(rows)
        assert delta["success"]["count"] == delta["queue"]["count"] == delta["compute_infer"]["count"] == len(rows)
        assert delta["fail"]["count"] == 1 and delta["fail"]["ns"] > 0
        assert delta["compute_infer"]["ns"] > 0 and delta["queue"]["ns"] >= 0
        assert delta["success"]["ns"] >= delta["queue"]["ns"] + delta["compute_infer"]["ns"]
        assert after["last_inference"] >= started_ms - 1
        sizes = {b["batch_size"] for b in after["batch_stats"]}
        assert sizes <= set(range(1, 9)) and {3} <= sizes

        rpc = client.get_inference_statistics("affine", as_json=True)["model_stats"][0]
        assert int(rpc["inference_count"]) == after["inference_count"]
        assert int(rpc["inference_stats"]["fail"]["count"]) == after["inference_stats"]["fail"]["count"]
        everything = client.get_inference_statistics(as_json=True)["model_stats"]
        assert [m["name"] for m in everything] == ["affine"]
        assert fails(lambda: client.get_inference_statistics("nope"))[0] == "NOT_FOUND"
        for path in ("/v2/models/stats", "/v2/models/affine/stats", "/v2/models/affine/versions/1/stats"):
            body = httpx.get(s.url + path).json()
            assert body["model_stats"][0]["inference_count"] == after["inference_count"], path
        missing = httpx.get(s.url + "/v2/models/nope/stats")
        assert missing.status_code == 404 and "'nope' is not served here" in missing.json()["error"]
        http.close()

    def test_grpc_requests_count_in_the_prometheus_metrics(self, served: tuple[ServerProcess, str],
                                                           client: tg.InferenceServerClient) -> None:
        from .conftest import metric_value
        url = served[0].url + "/metrics"
        before = metric_value(httpx.get(url).text, "trtop_inference_requests_total", model="affine", outcome="success")
        client.infer("affine", [x_input(np.ones((1, 4), np.float32))])
        after = metric_value(httpx.get(url).text, "trtop_inference_requests_total", model="affine", outcome="success")
        assert after == before + 1


def tcp_sockets(port: int, state: str) -> list[list[str]]:
    """/proc/net/tcp{,6} rows of sockets on local ``port`` in ``state`` (0A LISTEN, 01 ESTABLISHED; grpc
    listens on IPv6 with v4-mapped addresses)."""
    rows = [r.split() for f in ("tcp", "tcp6") for r in Path("/proc/net", f).read_text().splitlines()[1:]]
    return [r for r in rows if r[1].endswith(f":{port:04X}") and r[3] == state]


def grpc_listeners(port: int) -> int:
    return len(tcp_sockets(port, "0A"))


def client_ports(port: int) -> set[str]:
    """The remote ends (client addresses and ports) of established connections to ``port``."""
    return {r[2] for r in tcp_sockets(port, "01")}


def child_pids(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class TestLifecycle:
    def test_every_front_end_listens_for_grpc_and_a_killed_one_comes_back(self, tmp_path: Path) -> None:
        s, address = grpc_server(["--model", str(make_affine_onnx(tmp_path / "a.onnx")), "--model-name", "a",
                                  "--frontends", "2"], tmp_path)
        port = int(address.rsplit(":", 1)[1])

        def listeners_become(n: int) -> bool:
            deadline = time.monotonic() + 15
            while grpc_listeners(port) != n and time.monotonic() < deadline:
                time.sleep(0.05)
            return grpc_listeners(port) == n

        try:
            s.wait_ready()
            assert listeners_become(2), s.logs()  # SO_REUSEPORT: the kernel spreads connections over both
            x = np.ones((1, 4), np.float32)

            def infer_on_new_connections(n: int) -> None:
                for _ in range(n):
                    with tg.InferenceServerClient(address) as c:
                        np.testing.assert_array_equal(c.infer("a", [x_input(x)]).as_numpy("y"), x * 2 + 1)

            infer_on_new_connections(4)
            os.kill(child_pids(s.proc.pid)[0], signal.SIGKILL)
            assert listeners_become(1)
            infer_on_new_connections(4)  # the other front-end answers
            assert listeners_become(2), s.logs()  # the replacement bound the port again
            infer_on_new_connections(4)
        finally:
            s.stop()

    @pytest.mark.parametrize("frontends", ["0", "native"])
    def test_old_connections_are_asked_to_reconnect_and_no_call_is_lost(self, tmp_path: Path, frontends: str,
                                                                        request: pytest.FixtureRequest) -> None:
        """With ``--grpc-max-connection-age-s``, a client's connection is replaced every so often (GOAWAY; the
        calls in flight finish): a busy client lands on the kernel's choice of front-end, or a Service's of pod,
        again and again instead of once for good. Every call of a client calling throughout is answered."""
        flags, env = frontend_args(request, frontends)
        s, address = grpc_server(["--model", str(make_affine_onnx(tmp_path / "a.onnx")), "--model-name", "a",
                                  *flags, "--grpc-max-connection-age-s", "0.3"], tmp_path, env)
        port = int(address.rsplit(":", 1)[1])
        try:
            s.wait_ready()
            x = np.ones((1, 4), np.float32)
            peers: set[str] = set()
            with tg.InferenceServerClient(address) as c:
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline:
                    np.testing.assert_array_equal(c.infer("a", [x_input(x)]).as_numpy("y"), x * 2 + 1)
                    peers |= client_ports(port)
            assert len(peers) >= 3, peers  # ~8 connections' worth of time; at least a few were replaced
        finally:
            s.stop()

    @pytest.mark.parametrize("frontends", ["0", "1", "native"])
    def test_sigterm_answers_rpcs_in_flight_then_exits_0(self, tmp_path: Path, frontends: str,
                                                         request: pytest.FixtureRequest) -> None:
        flags, env = frontend_args(request, frontends)
        s, address = grpc_server(["--model", str(make_affine_onnx(tmp_path / "a.onnx")), "--model-name", "a",
                                  "--backend", SLOW, "--max-batch", "2", "--max-queue-delay-ms", "10000",
                                  *flags], tmp_path, env={"FAKE_RUN_DELAY_S": "0.3", **(env or {})})
        try:
            s.wait_ready()

            async def run() -> None:
                async with tga.InferenceServerClient(address) as c:
                    inputs = [np.full((1, 4), i, np.float32) for i in range(5)]
                    pending = []
                    for x in inputs:  # batches [0, 1], [2, 3]; 4 waits 10 s for a partner
                        pending.append(asyncio.ensure_future(c.infer("a", [x_input(x)])))
                        await asyncio.sleep(0.02)
                    await asyncio.sleep(0.1)
                    started = time.monotonic()
                    s.terminate()
                    results = await asyncio.gather(*pending)
                    for x, r in zip(inputs, results, strict=True):
                        np.testing.assert_array_equal(r.as_numpy("y"), x * 2 + 1)
                    assert time.monotonic() - started < 5

            asyncio.run(run())
            assert s.wait_exit(20) == 0, s.logs()
        finally:
            s.stop()

    @pytest.mark.parametrize("frontends", ["0", "1", "native"])
    def test_a_grpc_port_in_use_stops_the_server_and_says_so(self, tmp_path: Path, frontends: str,
                                                             request: pytest.FixtureRequest) -> None:
        flags, env = frontend_args(request, frontends)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            s = ServerProcess(["--model", str(make_affine_onnx(tmp_path / "a.onnx")), "--grpc-port", str(port),
                               *flags], env, log_dir=tmp_path)
            try:
                assert s.wait_exit(30) != 0
                assert f"gRPC on 127.0.0.1:{port}" in s.logs() or "cannot serve gRPC" in s.logs()
            finally:
                s.stop()


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata"])
def test_bytes_that_are_no_message_are_invalid_argument_without_a_traceback(
        served: tuple[ServerProcess, str], method: str) -> None:
    """A call whose bytes do not decode as the method's request message is answered INVALID_ARGUMENT naming the
    message type (grpc's own handling answered UNKNOWN and logged an ERROR with a traceback for each), and the
    server goes on answering; through a native front-end ModelInfer's bytes are forwarded to Python's gRPC."""
    server, address = served
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                   request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for garbage in (b"\xff\xff\xff", b"\x2a\xff\xff\xff\xff\x0f", b"\x0a\x05ab"):
            with pytest.raises(grpc.RpcError) as caught:
                call(garbage, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert "is not a valid inference." in caught.value.details()
        live = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
        assert live.live
    assert "Traceback" not in server.logs() and "DecodeError" not in server.logs()
