"""Infer requests served from the HTTP protocol's callbacks, without a task (``http_protocol``).

Real servers over raw sockets, one process and one front-end: small bodies (uvicorn's buffer) and
large ones (a sink) pipelined on one connection are answered in order, a refused one with the
route's own error, and the connection stays usable; ``Expect: 100-continue`` and chunked bodies
still take uvicorn's task path; ``Connection: close`` closes after the answer; a small body that
stops arriving is answered 400 and the next request is served; the metrics count every request
and nothing stays in flight.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from trtop import names

from .conftest import ServerProcess, metric_value
from .test_frontends import _read_answers

pytestmark = pytest.mark.slow
Start = Callable[..., ServerProcess]


def binary(x: np.ndarray, shape: list[int] | None = None) -> tuple[bytes, int]:
    """A binary-tensor infer body of ``x`` declared with ``shape`` (x's own by default), and its JSON length."""
    header = json.dumps({"inputs": [{"name": "x", "shape": shape or list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + x.tobytes(), len(header)


def infer(x: np.ndarray, *extra: str, shape: list[int] | None = None) -> bytes:
    """One raw HTTP infer request of ``x``, with ``extra`` header lines."""
    body, json_length = binary(x, shape)
    head = ["POST /v2/models/a/infer HTTP/1.1", "Host: x", f"Content-Length: {len(body)}",
            f"Inference-Header-Content-Length: {json_length}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def serve(start_server: Start, model: Path, processes: str, *flags: str) -> ServerProcess:
    """The affine model served as ``a`` by a ready server with ``processes`` front-ends."""
    s = start_server(["--model", str(model), "--model-name", "a", "--frontends", processes, *flags])
    s.wait_ready()
    return s


def outputs(head: bytes, payload: bytes, rows: int) -> np.ndarray:
    assert head.startswith(b"HTTP/1.1 200 "), payload[:300]
    json_length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"inference-header-content-length:"))
    return np.frombuffer(payload[json_length:json_length + rows * 16], np.float32).reshape(rows, 4)


@pytest.mark.parametrize("processes", ["0", "1"])
def test_pipelined_requests_answered_in_order_refusals_with_the_routes_error_and_the_connection_stays_usable(
        start_server: Start, affine_onnx: Path, processes: str) -> None:
    s = serve(start_server, affine_onnx, processes, "--max-batch", "60000")
    small = [np.full((n, 4), v, np.float32) for n, v in ((1, 1.0), (3, 2.0), (5000, 3.0), (2, 4.0))]  # 5000: a sink
    bad = infer(np.ones((2, 4), np.float32), shape=[2, 5])
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(b"".join(infer(x) for x in small[:3]) + bad + infer(small[3]))
        answers = _read_answers(sock, 5)
        for (head, payload), x in zip(answers[:3] + answers[4:], small, strict=True):
            np.testing.assert_array_equal(outputs(head, payload, len(x)), 2 * x + 1)
        refused_head, refused = answers[3]
        # The same words as the ASGI route (httpx through the app's own path below).
        assert refused_head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in refused_head.lower()
        body, json_length = binary(np.ones((2, 4), np.float32), [2, 5])
        # Expect: 100-continue takes uvicorn's task path (it must say 100 Continue before the body).
        routed = httpx.post(s.url + "/v2/models/a/infer", content=body,
                            headers={"Inference-Header-Content-Length": str(json_length), "Expect": "100-continue"})
        assert routed.status_code == 400 and json.loads(refused) == routed.json(), (refused, routed.text)
        sock.sendall(infer(small[0]))  # still usable after a refusal
        (head, payload), = _read_answers(sock, 1)
        np.testing.assert_array_equal(outputs(head, payload, 1), 2 * small[0] + 1)
        sock.sendall(infer(small[1], "Connection: close"))
        (head, payload), = _read_answers(sock, 1)
        assert b"connection: close" in head.lower()
        np.testing.assert_array_equal(outputs(head, payload, 3), 2 * small[1] + 1)
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed after its answer
    text = httpx.get(s.url + "/metrics").text
    assert metric_value(text, names.METRIC_REQUESTS, model="a", outcome="success") >= 6
    assert metric_value(text, names.METRIC_REQUESTS, model="a", outcome="bad_request") >= 2
    assert metric_value(text, names.METRIC_INFLIGHT, model="a") == 0


@pytest.mark.parametrize("processes", ["0", "1"])
def test_a_small_body_that_stops_is_answered_400_and_the_next_request_is_served(
        start_server: Start, affine_onnx: Path, processes: str) -> None:
    s = serve(start_server, affine_onnx, processes, "--body-timeout-s", "1")
    x = np.full((4, 4), 2.0, np.float32)
    request = infer(x)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(request[:-20])
        (head, text), = _read_answers(sock, 1)
        assert head.startswith(b"HTTP/1.1 400 ") and b"did not arrive" in text
        assert 0.9 < time.monotonic() - started < 10
        sock.sendall(request[-20:] + infer(x))  # the late tail is dropped, the next request answered
        (head, payload), = _read_answers(sock, 1)
        np.testing.assert_array_equal(outputs(head, payload, 4), 2 * x + 1)


def test_a_chunked_body_takes_the_task_path_and_is_answered(start_server: Start, affine_onnx: Path) -> None:
    s = serve(start_server, affine_onnx, "0")
    x = np.full((2, 4), 1.5, np.float32)
    body, json_length = binary(x)

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    r = httpx.post(s.url + "/v2/models/a/infer", content=chunks(),
                   headers={"Inference-Header-Content-Length": str(json_length)})
    assert r.status_code == 200 and r.request.headers.get("transfer-encoding") == "chunked"
    header = int(r.headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(r.content[header:header + 32], np.float32).reshape(2, 4), 2 * x + 1)


@pytest.mark.parametrize("processes", ["0", "1"])
def test_a_client_that_pipelines_and_never_reads_holds_a_bounded_number_of_answers(
        start_server: Start, affine_onnx: Path, processes: str) -> None:
    """Answers wait for the client to read them (as uvicorn's own send waits): the server stops taking that
    connection's requests until its answers drain, instead of holding them all; once the client reads,
    every request is answered."""
    s = serve(start_server, affine_onnx, processes, "--max-batch", "60000")
    count, rows = 80, 16000  # 256 KB in, 320 KB out each: 25 MB of answers in all
    x = np.full((rows, 4), 1.0, np.float32)
    request = infer(x)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # little room on the client's side
    sock.settimeout(60)
    sock.connect(("127.0.0.1", s.port))
    sender = threading.Thread(target=lambda: sock.sendall(request * count), daemon=True)
    sender.start()
    time.sleep(3)  # the client reads nothing meanwhile

    def answered() -> float:
        return metric_value(httpx.get(s.url + "/metrics").text, names.METRIC_REQUESTS, model="a", outcome="success")
    held = answered()
    assert 0 < held < count / 2, f"{held} of {count} requests were answered while the client read nothing"
    answers = _read_answers(sock, count)  # reading lets the rest through, in order
    sender.join(30)
    assert not sender.is_alive()
    for head, payload in answers[:: count // 4]:
        np.testing.assert_array_equal(outputs(head, payload, rows), 2 * x + 1)
    assert answered() == count
    sock.close()


@pytest.mark.parametrize("processes", ["0", "1"])
def test_bodies_refused_after_they_were_read_give_their_bytes_back(
        start_server: Start, affine_onnx: Path, processes: str) -> None:
    """A 65-dimension shape raised numpy's ValueError past the checks: the direct path caught only refusals, so each
    such request kept its bytes counted in flight (and its room in the front-end's arena); ~15 of them took a 1 MiB
    budget and every request after was refused 503. Now a 400 that says why, and the budget holds."""
    s = serve(start_server, affine_onnx, processes, "--max-inflight-mb", "1", "--max-body-mb", "1")
    url = s.url + "/v2/models/a/infer"
    bad = json.dumps({"inputs": [{"name": "x", "shape": [1] * 65, "datatype": "FP32", "data": [1.0]}],
                      "pad": "x" * 70_000})  # past SINK_MIN_BYTES: read into a sink
    for _ in range(20):
        refused = httpx.post(url, content=bad, timeout=30)
        assert refused.status_code == 400 and "65 dimensions" in refused.json()["error"], refused.text
    x = np.full((2, 4), 3.0, np.float32)
    body, json_length = binary(x)
    served = httpx.post(url, content=body, headers={"Inference-Header-Content-Length": str(json_length)}, timeout=30)
    assert served.status_code == 200, served.text
    assert metric_value(httpx.get(s.url + "/metrics").text, names.METRIC_INFLIGHT, model="a") == 0
