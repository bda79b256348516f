"""Triton's system shared memory extension: the registry's rules, the parser, and real servers.

The registry's checks run on files in a temporary folder standing in for ``/dev/shm``
(what ``shm_open`` names are). The servers are real (one process, and two front-ends in
front of the engine process, and the native front-end), with regions made by
``tritonclient.utils.shared_memory`` in the machine's ``/dev/shm`` and requests sent by
``tritonclient.http`` and ``tritonclient.grpc``, as a sidecar in the server's pod would.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from trtop.serve.errors import BadRequest
from trtop.serve.grpc import wire
from trtop.serve.protocol import RequestedOutput, parse_infer_request, write_outputs_to_regions
from trtop.serve.shared_memory import MAX_REGIONS, RECHECK_S, RegionSpec, Registry

from .conftest import ServerProcess, free_port, make_affine_onnx, native_env

WIDTH = 2048  # 8 KB per row: above the size that travels inside a descriptor, so front-ends use their arena


def make_object(folder: Path, key: str, data: bytes) -> Path:
    path = folder / key.lstrip("/")
    path.write_bytes(data)
    return path


# -- the registry -----------------------------------------------------------------------------
def test_a_registered_window_is_read_and_written_in_place_and_listed(tmp_path: Path) -> None:
    path = make_object(tmp_path, "obj", bytes(range(256)) * 16)
    reg = Registry(enabled=True, directory=str(tmp_path))
    reg.register(RegionSpec("r", "/obj", 100, 200))  # a window that does not start on a page
    assert bytes(reg.window("r", 0, 4, "input 'x'")) == bytes([100, 101, 102, 103])
    reg.window("r", 196, 4, "output 'y'")[:] = b"\xff" * 4
    assert path.read_bytes()[296:300] == b"\xff" * 4  # the client's object itself changed
    assert reg.status(None) == [{"name": "r", "key": "/obj", "offset": 100, "byte_size": 200}]
    assert reg.status("r") == reg.status(None)
    with pytest.raises(BadRequest, match="already registered"):
        reg.register(RegionSpec("r", "/obj", 0, 16))
    reg.unregister("r")
    reg.unregister("r")  # forgetting a region that is not there is not an error (as Triton)
    assert reg.status(None) == []
    with pytest.raises(BadRequest, match="no shared memory region 'r' is registered"):
        reg.window("r", 0, 4, "input 'x'")


@pytest.mark.parametrize("key", ["../etc/passwd", "a/b", ".hidden", "sem.mp-1", "/sem.x", "", "//obj", "k" * 300])
def test_keys_that_are_not_one_object_of_the_folder_are_refused(tmp_path: Path, key: str) -> None:
    make_object(tmp_path, "sem.x", b"\0" * 64)
    reg = Registry(enabled=True, directory=str(tmp_path))
    with pytest.raises(BadRequest, match="is not the name of a shared memory object"):
        reg.register(RegionSpec("r", key, 0, 16))
    assert len(reg) == 0


def test_windows_beyond_the_object_or_the_region_are_refused(tmp_path: Path) -> None:
    make_object(tmp_path, "obj", b"\0" * 64)
    reg = Registry(enabled=True, directory=str(tmp_path))
    with pytest.raises(BadRequest, match="has 64 bytes, fewer than offset 32 \\+ byte_size 64"):
        reg.register(RegionSpec("r", "obj", 32, 64))
    with pytest.raises(BadRequest, match="no shared memory object 'missing'"):
        reg.register(RegionSpec("r", "missing", 0, 16))
    with pytest.raises(BadRequest, match="byte_size > 0"):
        reg.register(RegionSpec("r", "obj", 0, 0))
    reg.register(RegionSpec("r", "obj", 0, 64))
    with pytest.raises(BadRequest, match="16 bytes at offset 56 of shared memory region 'r' pass its end"):
        reg.window("r", 56, 16, "input 'x'")
    with pytest.raises(BadRequest, match="shared_memory_offset must be a non-negative integer"):
        reg.window("r", -8, 8, "input 'x'")


def test_an_object_truncated_after_registration_is_refused_not_read(tmp_path: Path) -> None:
    path = make_object(tmp_path, "obj", b"\0" * 8192)
    reg = Registry(enabled=True, directory=str(tmp_path))
    reg.register(RegionSpec("r", "obj", 0, 8192))
    os.truncate(path, 0)  # reading the mapping now would fault (SIGBUS) and take the process down
    time.sleep(RECHECK_S * 2)  # sizes are looked at again after RECHECK_S
    with pytest.raises(BadRequest, match="shrank below the registered window"):
        reg.window("r", 4096, 16, "input 'x'")


def test_regions_are_bounded_and_off_refuses_them(tmp_path: Path) -> None:
    make_object(tmp_path, "obj", b"\0" * 64)
    reg = Registry(enabled=True, directory=str(tmp_path))
    for i in range(MAX_REGIONS):
        reg.register(RegionSpec(f"r{i}", "obj", 0, 64))
    with pytest.raises(BadRequest, match=f"holds {MAX_REGIONS} shared memory regions"):
        reg.register(RegionSpec("one-more", "obj", 0, 64))
    reg.close()
    off = Registry(enabled=False, directory=str(tmp_path))
    with pytest.raises(BadRequest, match="--shared-memory system"):
        off.register(RegionSpec("r", "obj", 0, 64))


def test_a_front_ends_registry_follows_the_engines(tmp_path: Path) -> None:
    make_object(tmp_path, "a", b"a" * 64)
    make_object(tmp_path, "b", b"b" * 64)
    front = Registry(enabled=True, directory=str(tmp_path))
    front.follow((RegionSpec("one", "a", 0, 64), RegionSpec("two", "b", 0, 64)))
    assert bytes(front.window("two", 0, 2, "x")) == b"bb"
    front.follow((RegionSpec("two", "a", 0, 32),))  # "one" gone, "two" now another window
    assert [s.name for s in front.specs()] == ["two"]
    assert bytes(front.window("two", 0, 2, "x")) == b"aa"
    front.follow((RegionSpec("gone", "deleted", 0, 8),))  # vanished meanwhile: logged, not registered
    assert len(front) == 0


# -- the v2 request parser ------------------------------------------------------------------------
def test_a_grpc_answer_keeps_an_entry_per_output_when_some_are_in_regions() -> None:
    """Triton's C++ client reads raw_output_contents by the output's position: an output written to a region
    has an empty entry, so the ones after it keep their places."""
    a, b = np.arange(4, dtype=np.float32), np.arange(3, dtype=np.int64)
    answer = wire.infer_response("m", "7", [("a", a), ("b", b)], {"a": ("ra", 0, a.nbytes)})
    assert [o.name for o in answer.outputs] == ["a", "b"]
    assert list(answer.raw_output_contents) == [b"", b.tobytes()]
    assert list(answer.outputs[0].shape) == [4]


def test_inputs_and_outputs_named_by_region_in_a_json_request(tmp_path: Path) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    make_object(tmp_path, "in", b"\0" * 16 + x.tobytes())
    make_object(tmp_path, "out", b"\0" * 64)
    reg = Registry(enabled=True, directory=str(tmp_path))
    reg.register(RegionSpec("in", "in", 0, 48))
    reg.register(RegionSpec("out", "out", 0, 64))
    doc: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {
        "shared_memory_region": "in", "shared_memory_offset": 16, "shared_memory_byte_size": 32}}],
        "outputs": [{"name": "y", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 64}},
                    {"name": "s"}]}
    body = json.dumps(doc).encode()
    request = parse_infer_request(body, None, regions=reg)
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.outputs == (RequestedOutput("y", False, ("out", 0, 64)), RequestedOutput("s", False))
    y = (x * 2).astype(np.float32)
    write_outputs_to_regions(reg, [(request.outputs[0], y), (request.outputs[1], x.sum(1))])
    np.testing.assert_array_equal(np.frombuffer((tmp_path / "out").read_bytes()[:32], np.float32).reshape(2, 4), y)
    with pytest.raises(BadRequest, match="output 'y' has 72 bytes \\(FP64\\[9\\]\\); its shared memory window has 64"):
        write_outputs_to_regions(reg, [(request.outputs[0], np.zeros(9, np.float64))])
    again = parse_infer_request(body, None, regions=reg)  # the same header: its kept plan, the region looked up anew
    np.testing.assert_array_equal(again.inputs["x"], x)
    with pytest.raises(BadRequest, match="system shared memory extension is off"):
        parse_infer_request(body, None)  # a kept plan does not pass a server that has it off
    reg.unregister("in")
    with pytest.raises(BadRequest, match="no shared memory region 'in' is registered"):
        parse_infer_request(body, None, regions=reg)
    reg.register(RegionSpec("in", "in", 0, 48))
    doc["inputs"][0]["parameters"]["shared_memory_byte_size"] = 16
    with pytest.raises(BadRequest, match="shared_memory_byte_size 16 does not match shape \\[2, 4\\] of FP32"):
        parse_infer_request(json.dumps(doc).encode(), None, regions=reg)
    with pytest.raises(BadRequest, match="system shared memory extension is off"):
        parse_infer_request(body, None)  # a server without it


# -- real servers -----------------------------------------------------------------------------------
class Regions:
    """Regions made the way a client makes them (``tritonclient.utils.shared_memory``), destroyed at the end."""

    def __init__(self) -> None:
        self.handles: list[object] = []
        self.tag = uuid.uuid4().hex[:10]

    def make(self, name: str, nbytes: int) -> tuple[object, str]:
        key = f"/trtop-test-{self.tag}-{name}"
        handle = shm.create_shared_memory_region(name, key, nbytes)
        self.handles.append(handle)
        return handle, key

    def close(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions() -> Iterator[Regions]:
    r = Regions()
    yield r
    r.close()


def start(tmp: Path, frontends: str, env: dict[str, str] | None = None, on: bool = True) -> tuple[ServerProcess, str]:
    grpc_port = free_port()
    model = make_affine_onnx(tmp / "affine.onnx", width=WIDTH)
    server = ServerProcess(["--model", str(model), "--model-name", "affine", "--max-batch", "8",
                            "--frontends", frontends, "--grpc-port", str(grpc_port),
                            *(["--shared-memory", "system"] if on else [])], env, tmp)
    server.wait_ready()
    return server, f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module", params=["0", "2"], ids=["one-process", "two-front-ends"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    server, address = start(tmp_path_factory.mktemp("shm"), request.param)
    yield server, address
    server.stop()


def http_roundtrip(url: str, regions: Regions, rows: int, clients: int) -> None:
    """Register an input and an output region, then infer through ``clients`` fresh connections (the kernel
    spreads them over the front-ends): each answer's rows are the input's, the output read from its region."""
    x = np.random.default_rng(rows).standard_normal((rows, WIDTH)).astype(np.float32)
    x_handle, x_key = regions.make("x_in", x.nbytes + 64)
    y_handle, y_key = regions.make("y_out", x.nbytes)
    shm.set_shared_memory_region(x_handle, [x], offset=64)
    control = th.InferenceServerClient(url.removeprefix("http://"))
    control.unregister_system_shared_memory()
    control.register_system_shared_memory("x_in", x_key, x.nbytes + 64)
    control.register_system_shared_memory("y_out", y_key, x.nbytes)
    listed = {r["name"]: r for r in control.get_system_shared_memory_status()}
    assert listed["x_in"] == {"name": "x_in", "key": x_key, "offset": 0, "byte_size": x.nbytes + 64}
    for _ in range(clients):
        client = th.InferenceServerClient(url.removeprefix("http://"))
        x_in = th.InferInput("x", [rows, WIDTH], "FP32")
        x_in.set_shared_memory("x_in", x.nbytes, offset=64)
        y_out = th.InferRequestedOutput("y")
        y_out.set_shared_memory("y_out", x.nbytes)
        result = client.infer("affine", [x_in], outputs=[y_out, th.InferRequestedOutput("s")])
        # no bytes and no parameters (Triton's C++ client, perf_analyzer's, reads parameters as binary_data_size's)
        assert result.get_output("y") == {"name": "y", "datatype": "FP32", "shape": [rows, WIDTH]}
        y = shm.get_contents_as_numpy(y_handle, np.float32, [rows, WIDTH])
        np.testing.assert_allclose(y, 2 * x + 1, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("s")[:, 0], x.sum(1), rtol=1e-4, atol=1e-3)
        shm.set_shared_memory_region(y_handle, [np.zeros_like(x)])
        client.close()
    control.unregister_system_shared_memory("x_in")
    x_in = th.InferInput("x", [rows, WIDTH], "FP32")
    x_in.set_shared_memory("x_in", x.nbytes, offset=64)
    with pytest.raises(InferenceServerException, match="no shared memory region 'x_in' is registered"):
        control.infer("affine", [x_in])
    control.close()


@pytest.mark.slow
class TestServed:
    def test_http_inputs_and_outputs_in_regions_on_every_front_end(self, served: tuple[ServerProcess, str],
                                                                  regions: Regions) -> None:
        http_roundtrip(served[0].url, regions, rows=3, clients=6)
        assert "system_shared_memory" in httpx.get(served[0].url + "/v2").json()["extensions"]

    def test_grpc_inputs_and_outputs_in_regions(self, served: tuple[ServerProcess, str], regions: Regions) -> None:
        x = np.random.default_rng(7).standard_normal((2, WIDTH)).astype(np.float32)
        x_handle, x_key = regions.make("gx", x.nbytes)
        y_handle, y_key = regions.make("gy", x.nbytes)
        shm.set_shared_memory_region(x_handle, [x])
        client = tg.InferenceServerClient(served[1])
        client.register_system_shared_memory("gx", x_key, x.nbytes)
        client.register_system_shared_memory("gy", y_key, x.nbytes)
        assert set(client.get_system_shared_memory_status().regions) >= {"gx", "gy"}
        x_in = tg.InferInput("x", [2, WIDTH], "FP32")
        x_in.set_shared_memory("gx", x.nbytes)
        y_out = tg.InferRequestedOutput("y")
        y_out.set_shared_memory("gy", x.nbytes)
        result = client.infer("affine", [x_in], outputs=[y_out])
        # The output in its region keeps an empty entry in raw_output_contents, as Triton's server answers.
        assert list(result.get_output("y").shape) == [2, WIDTH]
        assert list(result.get_response().raw_output_contents) == [b""]
        np.testing.assert_allclose(shm.get_contents_as_numpy(y_handle, np.float32, [2, WIDTH]), 2 * x + 1, rtol=1e-6)
        small = tg.InferRequestedOutput("y")
        small.set_shared_memory("gy", x.nbytes // 2)  # the answer does not fit: refused, the region untouched
        with pytest.raises(InferenceServerException, match="output 'y' has 16384 bytes .* window has 8192"):
            client.infer("affine", [x_in], outputs=[small])
        client.unregister_system_shared_memory()
        assert len(client.get_system_shared_memory_status().regions) == 0
        client.close()

    def test_registrations_that_cannot_hold_are_refused_with_reasons(self, served: tuple[ServerProcess, str],
                                                                     regions: Regions) -> None:
        _, key = regions.make("small", 4096)
        client = th.InferenceServerClient(served[0].url.removeprefix("http://"))
        with pytest.raises(InferenceServerException, match="fewer than offset 0 \\+ byte_size 8192"):
            client.register_system_shared_memory("small", key, 8192)
        with pytest.raises(InferenceServerException, match="is not the name of a shared memory object"):
            client.register_system_shared_memory("etc", "/../etc/passwd", 16)
        with pytest.raises(InferenceServerException, match="CUDA shared memory extension is not supported"):
            client.register_cuda_shared_memory("c", b"handle", 0, 16)
        assert client.get_cuda_shared_memory_status() == []
        client.unregister_cuda_shared_memory()  # what clients call before they start: nothing to do
        client.register_system_shared_memory("small", key, 4096)
        x_in = th.InferInput("x", [1, WIDTH], "FP32")
        x_in.set_shared_memory("small", 4 * WIDTH)
        with pytest.raises(InferenceServerException, match="8192 bytes at offset 0 of shared memory region 'small'"):
            client.infer("affine", [x_in])
        client.unregister_system_shared_memory("small")
        client.close()


@pytest.mark.slow
def test_off_by_default_and_the_refusal_says_how_to_turn_it_on(tmp_path: Path, regions: Regions) -> None:
    server, _ = start(tmp_path, "0", on=False)
    try:
        _, key = regions.make("r", 4096)
        answer = httpx.post(server.url + "/v2/systemsharedmemory/region/r/register",
                            json={"key": key, "offset": 0, "byte_size": 4096})
        assert answer.status_code == 400 and "--shared-memory system" in answer.json()["error"]
        # JSON nested past the parser's depth was a 500 (RecursionError); a body past the endpoint's fixed bound
        # told the client to raise --max-body-mb, which has no say here
        nested = httpx.post(server.url + "/v2/systemsharedmemory/region/r/register", content=b"[" * 30000 + b"]" * 30000)
        assert nested.status_code == 400 and "not valid JSON" in nested.json()["error"]
        large = httpx.post(server.url + "/v2/systemsharedmemory/region/r/register", content=b" " * 100_000)
        assert large.status_code == 413 and "a registration is a small JSON object" in large.json()["error"]
        assert httpx.get(server.url + "/v2/systemsharedmemory/status").json() == []
        assert "system_shared_memory" not in httpx.get(server.url + "/v2").json()["extensions"]
    finally:
        server.stop()


@pytest.mark.slow
def test_the_native_front_end_hands_region_requests_to_the_python_one(tmp_path: Path, regions: Regions,
                                                                      native_bin: Path) -> None:
    server, _ = start(tmp_path, "1", env=native_env(native_bin))
    try:
        http_roundtrip(server.url, regions, rows=2, clients=2)
    finally:
        server.stop()
