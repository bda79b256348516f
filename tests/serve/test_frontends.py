"""The multi-process server: front-end processes in front of one engine process.

Real processes over real HTTP: requests from every front-end batch together in the one
engine; a front-end killed with requests in flight is replaced while the others keep
serving and nothing hangs; SIGTERM drains every process; the bytes in flight are bounded.
Each runs with Python front-ends and with the native one (``native/http``), with binary
tensors (the native front-end's own path).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from trtop import names

from .conftest import ServerProcess, cmdline, metric_value, native_env

pytestmark = pytest.mark.slow
SLOW = "tests.serve.fakes:SlowOnnxRuntime"
Start = Callable[..., ServerProcess]
FRONTEND_PROGRAMS = {"python": "trtop.serve.frontend", "native": names.HTTP_FRONTEND_BINARY}


@pytest.fixture(params=["python", "native"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_kind(start_server: Start, kind: str, request: pytest.FixtureRequest) -> Start:
    """``start_server`` with the front-end kind of the test's parameter."""
    def start(args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        extra = native_env(request.getfixturevalue("native_bin")) if kind == "native" else {}
        return start_server(args, {**extra, **(env or {})})
    return start


def infer_json(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def frontends(server: ServerProcess, kind: str = "python") -> list[int]:
    """pids of the engine process's front-end children of ``kind`` (those that accept on the port)."""
    pid = server.proc.pid
    try:
        kids = (Path(f"/proc/{pid}/task/{pid}/children")).read_text().split()
    except OSError:
        return []
    program = FRONTEND_PROGRAMS[kind]
    return [int(k) for k in kids if program in cmdline(k)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s")


async def post_many(url: str, values: list[float], timeout: float = 30) -> list[object]:
    """One connection per request (so they spread over the front-ends), binary tensors; exceptions
    returned, not raised."""
    async def one(v: float) -> object:
        body, headers = _binary(np.full((1, 4), v, np.float32))
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
            return await client.post("/v2/models/a/infer", content=body, headers=headers)
    return await asyncio.gather(*(one(v) for v in values), return_exceptions=True)


async def test_requests_from_every_frontend_batch_in_one_engine(start_kind: Start, kind: str,
                                                                affine_onnx: Path) -> None:
    s = start_kind(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2", "--backend", SLOW],
                   env={"FAKE_RUN_DELAY_S": "0.2"})
    s.wait_ready()
    wait_for(lambda: len(frontends(s, kind)) == 2, 10, "two front-end processes")
    results = await post_many(s.url, [float(i) for i in range(12)])
    for i, r in enumerate(results):
        assert isinstance(r, httpx.Response) and r.status_code == 200, r
        assert _y(r, 1).tolist() == [[2 * i + 1.0] * 4]  # its own rows: y = 2x + 1
    text = httpx.get(s.url + "/metrics").text
    batches = metric_value(text, "trtop_inference_batch_size_count", model="a")
    assert batches < 12, "12 requests over 2 front-ends should share batches in the one engine"
    assert metric_value(text, "trtop_inference_requests_total", model="a", outcome="success") >= 12


async def test_a_killed_frontend_is_replaced_and_the_others_keep_serving(start_kind: Start, kind: str,
                                                                         affine_onnx: Path) -> None:
    s = start_kind(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2", "--backend", SLOW],
                   env={"FAKE_RUN_DELAY_S": "0.3"})
    s.wait_ready()
    wait_for(lambda: len(frontends(s, kind)) == 2, 10, "two front-end processes")
    victim = frontends(s, kind)[0]
    in_flight = asyncio.ensure_future(post_many(s.url, [float(i) for i in range(8)], timeout=20))
    await asyncio.sleep(0.15)
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.wait_for(in_flight, 25)  # nothing hangs: each answered or its connection dropped
    # Those the victim had accepted lose their connection; any the survivor had are answered.
    assert all(isinstance(r, httpx.TransportError) or (isinstance(r, httpx.Response) and r.status_code == 200)
               for r in results), results
    later = await post_many(s.url, [1.0] * 6)  # the survivor (and then the replacement) serve
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in later), later
    wait_for(lambda: len(frontends(s, kind)) == 2 and victim not in frontends(s, kind), 15, "a replacement front-end")
    assert "exited with code -9; starting a new one" in s.logs()
    assert s.proc.poll() is None


async def test_a_frontend_whose_loop_stops_answering_is_dumped_and_replaced(start_kind: Start, kind: str,
                                                                           affine_onnx: Path) -> None:
    s = start_kind(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2", "--frontend-stuck-s", "2"])
    s.wait_ready()
    wait_for(lambda: len(frontends(s, kind)) == 2, 10, "two front-end processes")
    time.sleep(3)  # past the bound: front-ends that answer their pings are left alone
    healthy, stuck = frontends(s, kind)
    assert "has not answered the engine" not in s.logs()
    os.kill(stuck, signal.SIGSTOP)  # alive, its sockets open, answering nothing: as a loop that never returns
    wait_for(lambda: f"(pid {stuck}) has not answered the engine for" in s.logs(), 10, "the stuck front-end seen")
    wait_for(lambda: len(frontends(s, kind)) == 2 and stuck not in frontends(s, kind), 15, "a replacement front-end")
    assert healthy in frontends(s, kind)  # the others keep serving
    later = await post_many(s.url, [1.0] * 6)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in later), later
    assert s.logs().count("has not answered the engine") == 1 and s.proc.poll() is None


async def test_sigterm_drains_every_process_and_answers_what_is_in_flight(start_kind: Start, kind: str,
                                                                            affine_onnx: Path) -> None:
    s = start_kind(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "2", "--backend", SLOW,
                    "--drain-delay-s", "0.5"], env={"FAKE_RUN_DELAY_S": "0.3"})
    s.wait_ready()
    wait_for(lambda: len(frontends(s, kind)) == 2, 10, "two front-end processes")
    children = frontends(s, kind) + frontends(s, "python")
    in_flight = asyncio.ensure_future(post_many(s.url, [float(i) for i in range(6)]))
    await asyncio.sleep(0.1)
    s.terminate()
    results = await in_flight
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), results
    assert s.wait_exit(30) == 0, s.logs()
    assert not any(Path(f"/proc/{c}").exists() for c in children), "a front-end outlived its engine"


async def test_bytes_in_flight_are_bounded(start_kind: Start, affine_onnx: Path) -> None:
    # One front-end's arena: --max-inflight-mb, never below one largest body + 4 MiB for outputs (5 MiB here).
    # Each request holds ~1.8 MiB (0.9 MiB in, as much out): a few fit, the rest get 503 + Retry-After at once.
    s = start_kind(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--max-body-mb", "1",
                      "--max-inflight-mb", "1", "--max-batch", "60000", "--backend", SLOW,
                      "--buckets", "1,60000"],  # two buckets to warm at 0.5 s a run, not 17
                     env={"FAKE_RUN_DELAY_S": "0.5"})
    s.wait_ready()
    x = np.ones((56000, 4), np.float32)
    header = (b'{"inputs":[{"name":"x","shape":[56000,4],"datatype":"FP32","parameters":{"binary_data_size":%d}}],'
              b'"parameters":{"binary_data_output":true}}' % x.nbytes)

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v2/models/a/infer", content=header + x.tobytes(),
                                 headers={"Inference-Header-Content-Length": str(len(header))})

    async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        results = await asyncio.gather(*(one(client) for _ in range(8)))
    codes = sorted(r.status_code for r in results)
    assert 200 in codes and 503 in codes and set(codes) == {200, 503}, codes
    refused = next(r for r in results if r.status_code == 503)
    assert refused.headers["retry-after"] and "in flight" in refused.json()["error"]
    text = httpx.get(s.url + "/metrics").text
    assert metric_value(text, "trtop_inference_requests_total", model="a", outcome="overloaded") == codes.count(503)


def _raw_request(port: int, declared: int, sent: bytes) -> "socket.socket":
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v2/models/a/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % declared + sent)
    return sock


def test_slow_bodies_time_out_and_bodies_beyond_the_budget_are_refused_before_reading(
        start_server: Start, affine_onnx: Path, request: pytest.FixtureRequest) -> None:
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "0", "--max-body-mb", "1",
                      "--max-inflight-mb", "1", "--body-timeout-s", "3"])
    s.wait_ready()
    slow = _raw_request(s.port, 700_000, b'{"inputs"')  # holds 700 kB of the 1 MiB budget, then stalls
    request.addfinalizer(slow.close)
    deadline = time.monotonic() + 2.5
    while True:  # the server reads the slow request's headers first (a loaded machine may take a moment)
        r = httpx.post(s.url + "/v2/models/a/infer", content=b"x" * 600_000)
        if r.status_code == 503 or time.monotonic() > deadline:
            break
        assert r.status_code == 400  # admitted before the slow one reserved its bytes: not JSON
        time.sleep(0.05)
    assert r.status_code == 503 and r.headers["retry-after"] and "in flight" in r.json()["error"]
    answer = b""
    try:
        while b"did not arrive" not in answer:  # headers and body may come in separate segments
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    finally:
        slow.close()
    assert b" 400 " in answer.split(b"\r\n")[0] and b"did not arrive within 3s" in answer
    ok = httpx.post(s.url + "/v2/models/a/infer", json=infer_json(np.ones((1, 4), np.float32)))
    assert ok.status_code == 200  # the budget is free again


def test_a_front_end_is_orphaned_only_when_the_process_that_started_it_is_gone():
    """In a container the engine process is pid 1: a front-end whose parent is pid 1 is not an orphan."""
    import json
    import subprocess
    import sys

    from trtop.serve.frontend import ENV_FRONTEND, setup_env
    from trtop.serve.settings import ServeSettings

    doc = json.loads(setup_env(ServeSettings(), index=0, listen_fd=3, channel_fd=4, arena_fd=5,
                               arena_size=1)[ENV_FRONTEND])
    assert doc["parent_pid"] == os.getpid()
    check = "import sys; from trtop.serve.frontend import orphaned; print(orphaned(int(sys.argv[1])))"
    ours = subprocess.run([sys.executable, "-c", check, str(os.getpid())], capture_output=True, text=True, check=True)
    assert ours.stdout.strip() == "False"
    gone = subprocess.run([sys.executable, "-c", check, "1"], capture_output=True, text=True, check=True)
    assert gone.stdout.strip() == "True"


def _binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = (b'{"inputs":[{"name":"x","shape":[%d,4],"datatype":"FP32","parameters":{"binary_data_size":%d}}],'
              b'"parameters":{"binary_data_output":true}}' % (x.shape[0], x.nbytes))
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def _y(response: httpx.Response, rows: int) -> np.ndarray:
    header = int(response.headers["inference-header-content-length"])
    return np.frombuffer(response.content[header:header + rows * 16], np.float32).reshape(rows, 4)


async def test_bodies_read_into_shared_memory_answer_their_own_request_and_give_their_room_back(
        start_server: Start, affine_onnx: Path, request: pytest.FixtureRequest) -> None:
    """A front-end reads each body into its arena: a body that times out, bytes that arrive after it
    did and a client that leaves mid-body neither leak the room nor reach another request's tensors."""
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", "1", "--max-body-mb", "1",
                      "--max-inflight-mb", "1", "--body-timeout-s", "2", "--max-batch", "60000"])
    s.wait_ready()
    stalled = _raw_request(s.port, 700_000, b'{"inputs"')  # holds 700 kB of the 1 MiB budget
    request.addfinalizer(stalled.close)
    big, headers = _binary(np.ones((56000, 4), np.float32))  # 896 kB: fits the budget only alone
    deadline = time.monotonic() + 1.5
    while (r := httpx.post(s.url + "/v2/models/a/infer", content=big, headers=headers)).status_code == 200:
        assert time.monotonic() < deadline, "the stalled body never held its bytes"
        time.sleep(0.05)
    assert r.status_code == 503
    answer = b""
    while b"did not arrive" not in answer and (chunk := stalled.recv(4096)):
        answer += chunk
    assert b" 400 " in answer.split(b"\r\n")[0]
    stalled.sendall(b"7" * 699_991)  # the rest, after the request gave up: dropped, never written anywhere

    async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        async def one(v: float) -> np.ndarray:
            x = np.full((3000, 4), v, np.float32)
            body, h = _binary(x)
            response = await client.post("/v2/models/a/infer", content=body, headers=h)
            assert response.status_code == 200, response.text
            return _y(response, 3000)

        values = [float(i) for i in range(12)]
        for v, y in zip(values, await asyncio.gather(*(one(v) for v in values)), strict=True):
            np.testing.assert_array_equal(y, np.full((3000, 4), 2 * v + 1, np.float32))

    leaving = _raw_request(s.port, len(big), big[:300_000])  # the client goes away mid-body
    leaving.close()
    deadline = time.monotonic() + 5
    while (r := httpx.post(s.url + "/v2/models/a/infer", content=big, headers=headers)).status_code != 200:
        assert time.monotonic() < deadline, f"the budget did not come back: {r.status_code} {r.text}"
        time.sleep(0.1)
    np.testing.assert_array_equal(_y(r, 56000), np.full((56000, 4), 3, np.float32))


def _read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` HTTP answers (head, body) read from a raw connection, in order."""
    data, answers = b"", []
    while len(answers) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end]
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            if len(data) >= head_end + 4 + length:
                answers.append((head, data[head_end + 4:head_end + 4 + length]))
                data = data[head_end + 4 + length:]
                continue
        chunk = sock.recv(1 << 20)
        assert chunk, f"the connection closed after {len(answers)} of {count} answers"
        data += chunk
    return answers


@pytest.mark.parametrize("processes", ["0", "1"])
def test_large_bodies_back_to_back_on_one_connection_each_get_their_own_answer(
        start_server: Start, affine_onnx: Path, processes: str) -> None:
    """Bodies of 64 KB and more are read from the socket straight into their buffer, past the HTTP parser:
    requests sent together (pipelined), split at odd places or followed by a small one on the same
    connection each get their own answer, and the connection stays usable."""
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", processes,
                      "--max-batch", "60000"])
    s.wait_ready()

    def raw(x: np.ndarray) -> bytes:
        body, headers = _binary(x)
        head = (f"POST /v2/models/a/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}\r\n\r\n")
        return head.encode() + body

    values = [1.0, 2.0, 3.0, 4.0]
    rows = [6000, 5000, 7000, 1]  # 96, 80, 112 KB, then a small body on the parser's own path
    requests = [raw(np.full((n, 4), v, np.float32)) for n, v in zip(rows, values, strict=True)]
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(requests[0] + requests[1])  # pipelined: the second starts right after the first body
        stream = requests[2] + requests[3]
        for cut in (100, 70_000, len(requests[2]) - 3, len(requests[2]) + 5):  # in the head, the body, across
            sock.sendall(stream[:cut])
            stream = stream[cut:]
            time.sleep(0.05)
        sock.sendall(stream)
        answers = _read_answers(sock, 4)
        for (head, body), n, v in zip(answers, rows, values, strict=True):
            assert head.startswith(b"HTTP/1.1 200 "), body[:200]
            json_length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"inference-header-content-length:"))
            y = np.frombuffer(body[json_length:json_length + n * 16], np.float32).reshape(n, 4)  # y, then s
            np.testing.assert_array_equal(y, np.full((n, 4), 2 * v + 1, np.float32))
        sock.sendall(requests[1])  # still usable
        (head, _), = _read_answers(sock, 1)
        assert head.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("processes", ["0", "1"])
def test_after_a_body_that_timed_out_its_late_bytes_are_dropped_and_the_connection_serves_the_next_request(
        start_server: Start, affine_onnx: Path, processes: str) -> None:
    """A body read straight into its buffer that stops arriving is answered 400; the rest of it, sent late, is
    read past and dropped (never parsed as a request, never written into memory given to another), and the
    next request on that connection is answered."""
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", processes,
                      "--max-batch", "60000", "--body-timeout-s", "1"])
    s.wait_ready()
    body, headers = _binary(np.full((6000, 4), 5.0, np.float32))  # 96 KB: read past the parser
    head = (f"POST /v2/models/a/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(head + body[:70_000])
        (late, text), = _read_answers(sock, 1)
        assert late.startswith(b"HTTP/1.1 400 ") and b"did not arrive" in text
        nxt, nxt_headers = _binary(np.full((2, 4), 1.0, np.float32))
        sock.sendall(body[70_000:] + (f"POST /v2/models/a/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(nxt)}\r\n"
                                      f"Inference-Header-Content-Length: "
                                      f"{nxt_headers['Inference-Header-Content-Length']}\r\n\r\n").encode() + nxt)
        (answer, payload), = _read_answers(sock, 1)
        assert answer.startswith(b"HTTP/1.1 200 "), payload[:200]
        json_length = next(int(line.split(b":")[1]) for line in answer.split(b"\r\n")
                           if line.lower().startswith(b"inference-header-content-length:"))
        np.testing.assert_array_equal(np.frombuffer(payload[json_length:json_length + 32], np.float32).reshape(2, 4),
                                      np.full((2, 4), 3.0, np.float32))


@pytest.mark.parametrize("processes,front", [("0", "python"), ("1", "python"), ("1", "native")],
                         ids=["one-process", "python-front-end", "native-front-end"])
def test_mangled_bytes_on_the_socket_leave_the_server_serving_without_a_traceback(
        start_server: Start, affine_onnx: Path, request: pytest.FixtureRequest, processes: str, front: str) -> None:
    """A client that writes anything (a good binary infer request, several back to back, with header lines,
    bytes and lengths inserted, flipped, cut or dropped, sent in pieces, read or not) gets answers or a closed
    connection; the server keeps answering a good request on a fresh connection, its processes stay the same,
    and nothing it logs is a traceback or an error. Seeded: the same 80 mangled writes every run."""
    import random

    env = native_env(request.getfixturevalue("native_bin")) if front == "native" else {}
    s = start_server(["--model", str(affine_onnx), "--model-name", "a", "--frontends", processes,
                      "--body-timeout-s", "1"], env)
    s.wait_ready()
    body, headers = _binary(np.full((2, 4), 1.0, np.float32))
    good = (f"POST /v2/models/a/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}\r\n\r\n").encode() + body
    inserts = [b"\r\n", b"\r\n\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Content-Length: 9999999999\r\n",
               b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n", b"Connection: close\r\n",
               b"Content-Encoding: gzip\r\n", b"Inference-Header-Content-Length: 0\r\n",
               b"Inference-Header-Content-Length: 999999\r\n", b"\x00", b" ", b":", b"0\r\n\r\n", good[:60]]
    rng = random.Random(15)
    before = frontends(s, front) if processes != "0" else []

    def read_what_comes(sock: socket.socket) -> None:
        sock.settimeout(0.5)
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass

    for _ in range(80):
        data = bytearray(good * rng.choice([1, 1, 2, 3]))
        for _ in range(rng.randint(1, 4)):
            i, r = rng.randrange(len(data) + 1), rng.random()
            if r < 0.4:
                data[i:i] = rng.choice(inserts)
            elif r < 0.6:
                del data[i:i + rng.randint(1, 50)]
            elif r < 0.8 and i < len(data):
                data[i] = rng.randrange(256)
            else:
                del data[i:]
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
            try:
                step = rng.choice([len(data) or 1, 7, 100])
                for at in range(0, len(data), step):
                    sock.sendall(data[at:at + step])
                if rng.random() < 0.5:
                    read_what_comes(sock)
            except (BrokenPipeError, ConnectionResetError):
                pass
    reply = httpx.post(s.url + "/v2/models/a/infer", content=body, headers=headers, timeout=10)
    assert reply.status_code == 200 and np.array_equal(_y(reply, 2), np.full((2, 4), 3.0, np.float32))
    assert frontends(s, front) == before and s.proc.poll() is None
    logs = s.logs()
    assert "Traceback" not in logs and " ERROR " not in logs, logs[-3000:]
