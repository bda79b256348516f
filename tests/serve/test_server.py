"""``trtop serve`` as a real process over real HTTP: protocol, errors, batching, overload, drain.

Clients: the official ``tritonclient.http`` (JSON and binary tensors) and plain httpx.
Each server is a subprocess on a free port with tiny ONNX models, so the whole file runs
in well under a minute on two cores.
"""
from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from trtop.api.targets import Target

from .conftest import ServerProcess, affine_record, make_affine_onnx, make_engine_dir, make_sequence_onnx, metric_value

pytestmark = pytest.mark.slow
SLOW = "tests.serve.fakes:SlowOnnxRuntime"
Start = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The affine model with batches of up to 8 and a 20 ms window to fill them."""
    tmp = tmp_path_factory.mktemp("affine")
    s = ServerProcess(["--model", str(make_affine_onnx(tmp / "affine.onnx")), "--model-name", "affine",
                       "--max-batch", "8", "--max-queue-delay-ms", "20", "--max-body-mb", "0.05"], log_dir=tmp)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def infer_json(x: np.ndarray, name: str = "x", datatype: str = "FP32") -> dict[str, object]:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]}


class TestProtocol:
    def test_health_and_metadata(self, server: ServerProcess) -> None:
        get = lambda path: httpx.get(server.url + path)  # noqa: E731
        assert get("/v2/health/live").status_code == 200
        assert get("/v2/health/ready").json() == {"ready": True}
        assert "binary_tensor_data" in get("/v2").json()["extensions"]
        meta = get("/v2/models/affine").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["y", "s"]
        assert get("/v2/models/affine/versions/1").json() == meta
        assert get("/v2/models/affine/ready").status_code == 200
        assert get("/v2/models/affine/config").json()["max_batch_size"] == 8

    def test_tritonclient_binary_and_json(self, server: ServerProcess) -> None:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("affine")
        assert client.get_model_metadata("affine")["platform"] == "onnxruntime_onnx"
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        binary_in = triton.InferInput("x", [3, 4], "FP32")
        binary_in.set_data_from_numpy(x)  # binary by default
        result = client.infer("affine", [binary_in], request_id="r-1")  # all outputs, binary
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2 + 1)
        np.testing.assert_array_equal(result.as_numpy("s"), x.sum(1, keepdims=True))
        assert result.get_response()["id"] == "r-1"
        json_in = triton.InferInput("x", [3, 4], "FP32")
        json_in.set_data_from_numpy(x, binary_data=False)
        outputs = [triton.InferRequestedOutput("s", binary_data=False)]
        result = client.infer("affine", [json_in], outputs=outputs, request_compression_algorithm="gzip")
        assert result.get_response()["outputs"][0]["data"] == [6.0, 22.0, 38.0]
        assert result.as_numpy("y") is None
        client.close()

    def test_plain_json(self, server: ServerProcess) -> None:
        r = httpx.post(server.url + "/v2/models/affine/versions/1/infer", json=infer_json(np.ones((1, 4), np.float32)))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.json()["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [3.0] * 4}

    @pytest.mark.parametrize("path,body,status,match", [
        ("/v2/models/affine/infer", infer_json(np.ones((1, 4), np.float32), name="z"), 400, "unknown input 'z'"),
        ("/v2/models/affine/infer", infer_json(np.ones((1, 3), np.float32)), 400, "the model expects [-1, 4]"),
        ("/v2/models/affine/infer", infer_json(np.ones((1, 4)), datatype="FP64"), 400, "expects FP32"),
        ("/v2/models/affine/infer", infer_json(np.ones((9, 4), np.float32)), 400, "max batch of 8"),
        ("/v2/models/affine/infer", {"inputs": "x"}, 400, "non-empty"),
        ("/v2/models/nope/infer", infer_json(np.ones((1, 4), np.float32)), 404, "'nope' is not served here"),
        ("/v2/models/affine/versions/2/infer", infer_json(np.ones((1, 4), np.float32)), 404, "no version '2'"),
        ("/v2/models/affine/infer", infer_json(np.ones((4000, 4), np.float32)), 413, "at most 52428"),
    ])
    def test_client_errors_are_json_that_says_what_is_wrong(self, server: ServerProcess, path: str,
                                                            body: dict[str, object], status: int, match: str) -> None:
        r = httpx.post(server.url + path, json=body)
        assert r.status_code == status, r.text
        assert match in r.json()["error"]

    def test_unknown_routes_and_methods_are_json_too(self, server: ServerProcess) -> None:
        assert httpx.get(server.url + "/v1/models").json()["error"].endswith("Not Found")
        assert httpx.get(server.url + "/v2/models/affine/infer").status_code == 405

    def test_tritonclient_sees_errors_as_exceptions(self, server: ServerProcess) -> None:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        bad = triton.InferInput("x", [1, 4], "INT32")
        bad.set_data_from_numpy(np.ones((1, 4), np.int32))
        with pytest.raises(InferenceServerException, match="datatype INT32, the model expects FP32"):
            client.infer("affine", [bad])
        client.close()


class TestBatching:
    async def test_each_concurrent_request_gets_its_own_rows_and_batches_form(self, server: ServerProcess) -> None:
        before = httpx.get(server.url + "/metrics").text
        inputs = [np.random.rand(1 + i % 3, 4).astype(np.float32) + i for i in range(48)]
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/v2/models/affine/infer", json=infer_json(x))
                                               for x in inputs))
        for x, r in zip(inputs, responses, strict=True):
            assert r.status_code == 200, r.text
            y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(x.shape)
            np.testing.assert_allclose(y, x * 2 + 1, rtol=1e-6)
        after = httpx.get(server.url + "/metrics").text
        rows = metric_value(after, "trtop_inference_batch_size_sum") - metric_value(before, "trtop_inference_batch_size_sum")
        batches = (metric_value(after, "trtop_inference_batch_size_count")
                   - metric_value(before, "trtop_inference_batch_size_count"))
        assert rows == sum(x.shape[0] for x in inputs)
        assert batches < len(inputs)  # several requests shared a batch
        ok = metric_value(after, "trtop_inference_requests_total", model="affine", outcome="success")
        assert ok >= len(inputs)
        assert metric_value(after, "trtop_inference_request_duration_seconds_count", model="affine") >= len(inputs)

    async def test_requests_of_different_shapes_are_answered_correctly(self, start_server: Start,
                                                                       tmp_path: Path) -> None:
        s = start_server(["--model", str(make_sequence_onnx(tmp_path / "seq.onnx")), "--model-name", "seq",
                          "--max-queue-delay-ms", "20"])
        s.wait_ready()
        inputs = [np.arange(1 + i % 5, dtype=np.int64)[None, :] + i for i in range(30)]
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/v2/models/seq/infer", json=infer_json(x, datatype="INT64"))
                                               for x in inputs))
        for x, r in zip(inputs, responses, strict=True):
            assert r.json()["outputs"][0]["data"] == (x * 3).ravel().tolist()


class TestOverload:
    async def test_full_queue_is_503_with_retry_after_and_deadline_is_504(self, start_server: Start,
                                                                          affine_onnx: Path) -> None:
        s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--backend", SLOW, "--max-batch", "1",
                          "--max-queue-size", "1", "--max-queue-delay-ms", "0"], env={"FAKE_RUN_DELAY_S": "0.6"})
        s.wait_ready()
        body = infer_json(np.ones((1, 4), np.float32))
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            running = asyncio.ensure_future(client.post("/v2/models/a/infer", json=body))
            await asyncio.sleep(0.2)
            queued = asyncio.ensure_future(client.post("/v2/models/a/infer", json=body))
            await asyncio.sleep(0.1)
            refused = await client.post("/v2/models/a/infer", json=body)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "queue is full" in refused.json()["error"]
            assert (await running).status_code == 200 and (await queued).status_code == 200
            busy = asyncio.ensure_future(client.post("/v2/models/a/infer", json=body))
            await asyncio.sleep(0.1)
            late = await client.post("/v2/models/a/infer", json={**body, "parameters": {"timeout": 100_000}})
            assert late.status_code == 504 and "waited 0.1s in the queue" in late.json()["error"]
            assert (await busy).status_code == 200
        metrics = httpx.get(s.url + "/metrics").text
        assert metric_value(metrics, "trtop_inference_requests_total", model="a", outcome="overloaded") == 1
        assert metric_value(metrics, "trtop_inference_requests_total", model="a", outcome="timeout") == 1


class TestDrainAndReadiness:
    async def test_sigterm_finishes_queued_and_running_requests_then_exits_0(self, start_server: Start,
                                                                            affine_onnx: Path) -> None:
        s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--backend", SLOW, "--max-batch", "2",
                          "--max-queue-delay-ms", "10000"], env={"FAKE_RUN_DELAY_S": "0.3"})
        s.wait_ready()
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            inputs = [np.full((1, 4), i, np.float32) for i in range(5)]
            pending = []
            for x in inputs:  # in order: batches [0, 1], [2, 3], then 4 waits 10 s for a partner
                pending.append(asyncio.ensure_future(client.post("/v2/models/a/infer", json=infer_json(x))))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            started = time.monotonic()
            s.terminate()
            responses = await asyncio.gather(*pending)
        for x, r in zip(inputs, responses, strict=True):
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == (x * 2 + 1).ravel().tolist()
        assert s.wait_exit(20) == 0, s.logs()
        assert time.monotonic() - started < 5  # the lone request ran at shutdown, not after its 10 s window

    async def test_after_sigterm_not_ready_but_serving_for_the_drain_delay(self, start_server: Start,
                                                                           affine_onnx: Path) -> None:
        # 5 s of drain: the three requests below must fit in it on a loaded machine too.
        s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--drain-delay-s", "5"])
        s.wait_ready()
        s.terminate()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert (await client.get("/v2/health/live")).status_code == 200
            r = await client.post("/v2/models/a/infer", json=infer_json(np.ones((1, 4), np.float32)))
            assert r.status_code == 200
        assert s.wait_exit(20) == 0, s.logs()

    # Loading waits for a file the test creates once it has seen "live but not ready" (front-end
    # processes take seconds to start on a loaded two-core machine, so no fixed delay is safe).
    @pytest.mark.parametrize("frontends", ["0", "2"])
    def test_ready_only_after_load_and_warm_up(self, start_server: Start, affine_onnx: Path, frontends: str,
                                               tmp_path: Path) -> None:
        gate = tmp_path / "load-now"
        s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--backend", SLOW,
                          "--frontends", frontends], env={"FAKE_LOAD_GATE": str(gate)})
        s.wait_live(120)
        started = time.monotonic()
        assert httpx.get(s.url + "/v2/health/ready").status_code == 503
        r = httpx.post(s.url + "/v2/models/a/infer", json=infer_json(np.ones((1, 4), np.float32)))
        assert r.status_code == 503 and "loading" in r.json()["error"]
        time.sleep(0.5)
        held = time.monotonic() - started
        gate.touch()
        s.wait_ready(60)
        assert metric_value(httpx.get(s.url + "/metrics").text, "trtop_model_load_seconds", model="a") >= held

    def test_sigusr1_logs_a_one_process_servers_state_and_stacks_and_serving_goes_on(
            self, start_server: Start, affine_onnx: Path) -> None:
        s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--backend", SLOW, "--frontends", "0"],
                         env={"FAKE_RUN_DELAY_S": "1.0"})
        s.wait_ready(60)
        running = re.compile(rf"state: engine {s.proc.pid}: model ready; requests queued 0 \(0 rows, the oldest for "
                             r"0\.000s\); batches running 1 of 1 \(full\); batch worker running; batches run 0")

        async def dump_while_one_runs() -> int:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                call = asyncio.ensure_future(client.post("/v2/models/a/infer",
                                                         json=infer_json(np.full((1, 4), 1.0, np.float32))))
                for _ in range(9):  # it runs for 1 s once it has arrived
                    await asyncio.sleep(0.05)
                    s.proc.send_signal(signal.SIGUSR1)
                    await asyncio.sleep(0.05)
                    if running.search(s.logs()):
                        break
                return (await call).status_code

        assert asyncio.run(dump_while_one_runs()) == 200
        logs = s.logs()
        assert running.search(logs), logs[-3000:]
        assert "Thread 0x" in logs and "in run" in logs  # every thread's stack: the instance's is in the model's run

    def test_a_model_that_fails_to_load_exits_1(self, start_server: Start, affine_onnx: Path) -> None:
        s = start_server(["--model", str(affine_onnx), "--backend", SLOW], env={"FAKE_LOAD_FAIL": "1"})
        assert s.wait_exit(30) == 1
        assert "the test asked this load to fail" in s.logs()


class TestEngineSelection:
    def store(self, root: Path) -> str:
        make_engine_dir(root, affine_record("e-00000000000000c0", max_batch=4))
        make_engine_dir(root, affine_record("e-0000000000000090", target=Target.parse("9.0/NVIDIA-H100-80GB-HBM3")))
        return f"file://{root}"

    def test_picks_the_engine_for_this_device_from_the_store(self, start_server: Start, tmp_path: Path) -> None:
        store = self.store(tmp_path / "store")
        engine_set = json.dumps([{"key": k, "target": t, "backend": "onnxruntime", "artifact": "model.onnx",
                                  "sha256": json.loads((tmp_path / "store" / k / "engine.json").read_text())["sha256"]}
                                 for k, t in (("e-0000000000000090", {"cc": "9.0", "product": "NVIDIA-H100-80GB-HBM3"}),
                                              ("e-00000000000000c0", {"cc": "cpu", "product": None}))])
        s = start_server([], env={"TRTOP_ENGINE_SET": engine_set, "TRTOP_STORE_URI": store,
                                  "TRTOP_MODEL_NAME": "m", "TRTOP_ENGINE_CACHE_DIR": str(tmp_path / "cache")})
        s.wait_ready()
        params = httpx.get(s.url + "/v2/models/m").json()["parameters"]
        assert (params["engine_key"], params["target"], params["max_batch_size"]) == ("e-00000000000000c0", "cpu", 4)
        assert (tmp_path / "cache" / "e-00000000000000c0" / "model.onnx").exists()

    def test_no_matching_engine_refuses_to_start_and_says_why(self, start_server: Start, tmp_path: Path) -> None:
        s = start_server([], env={"TRTOP_ENGINE_SET": '["e-0000000000000090"]', "TRTOP_STORE_URI": self.store(tmp_path / "store"),
                                  "TRTOP_DEVICE": "8.9/NVIDIA-L4"})
        assert s.wait_exit(30) == 2
        logs = s.logs()
        assert "GPU NVIDIA-L4 (compute capability 8.9)" in logs
        assert "e-0000000000000090 for 9.0/NVIDIA-H100-80GB-HBM3 (onnxruntime)" in logs

    def test_engine_dir(self, start_server: Start, tmp_path: Path) -> None:
        folder = make_engine_dir(tmp_path, affine_record(max_batch=5))
        s = start_server(["--engine-dir", str(folder), "--model-name", "m"])
        s.wait_ready()
        assert httpx.get(s.url + "/v2/models/m/config").json()["max_batch_size"] == 5
