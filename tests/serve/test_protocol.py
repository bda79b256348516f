"""The v2 wire format: JSON and binary tensors in, JSON and binary tensors out."""
from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from trtop.serve import protocol
from trtop.serve.errors import BadRequest, PayloadTooLarge
from trtop.serve.protocol import (
    MAX_TIMEOUT_US, RequestedOutput, decode_body, encode_infer_response, parse_infer_request,
)


def binary_body(arrays: dict[str, np.ndarray], datatype: str = "FP32", **extra: object) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": a.nbytes}} for n, a in arrays.items()],
                         **extra}).encode()
    return header + b"".join(a.tobytes() for a in arrays.values()), len(header)


class TestParse:
    def test_json_tensor_flat_or_nested(self) -> None:
        for data in ([1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]):
            body = json.dumps({"id": "r1", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32",
                                                       "data": data}]}).encode()
            req = parse_infer_request(body, None)
            assert req.id == "r1" and req.outputs is None and not req.binary_output
            np.testing.assert_array_equal(req.inputs["x"], np.arange(1, 7, dtype=np.int32).reshape(2, 3))

    def test_binary_tensors_are_views_of_the_body_in_order(self) -> None:
        a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 1), np.float32)
        body, n = binary_body({"a": a, "b": b}, parameters={"binary_data_output": True})
        req = parse_infer_request(body, n)
        np.testing.assert_array_equal(req.inputs["a"], a)
        np.testing.assert_array_equal(req.inputs["b"], b)
        assert req.binary_output and not req.inputs["a"].flags.owndata

    def test_requested_outputs_and_timeout(self) -> None:
        body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                           "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "s"}],
                           "parameters": {"timeout": 250000}}).encode()
        req = parse_infer_request(body, None)
        assert req.outputs == (RequestedOutput("y", True), RequestedOutput("s", False))
        assert req.timeout_s == pytest.approx(0.25)

    @pytest.mark.parametrize("timeout", [MAX_TIMEOUT_US + 1, 10**400])
    def test_a_timeout_past_a_day_is_a_day(self, timeout: int) -> None:
        """10**400 us once raised OverflowError where a deadline was computed: past the 400 checks, so the request's
        bytes stayed counted in flight (docs/server.md, Endpoints)."""
        body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": {"timeout": ' \
            + str(timeout).encode() + b"}}"
        assert parse_infer_request(body, None).timeout_s == MAX_TIMEOUT_US / 1e6

    @pytest.mark.parametrize("body,match", [
        (b"{nope", "not valid JSON"),
        (b'{"inputs": []}', "non-empty"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]}', "1 values but shape"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', "not supported"),
        (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}', "non-negative"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', "not a list of FP32"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', "neither"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
         b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "twice"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": {"timeout": -5}}',
         "timeout"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],'
         b' "outputs": [{"name": "y", "parameters": {"classification": 3}}]}', "classification"),
    ])
    def test_malformed_requests_say_what_is_wrong(self, body: bytes, match: str) -> None:
        with pytest.raises(BadRequest, match=match):
            parse_infer_request(body, None)

    def test_binary_size_must_match_shape_and_body(self) -> None:
        a = np.zeros((2, 2), np.float32)
        body, n = binary_body({"a": a})
        with pytest.raises(BadRequest, match="ends before"):
            parse_infer_request(body[:-1], n)
        with pytest.raises(BadRequest, match="declare"):
            parse_infer_request(body + b"\0", n)
        bad = body.replace(b'"binary_data_size": 16', b'"binary_data_size": 12')
        with pytest.raises(BadRequest, match="does not match shape"):
            parse_infer_request(bad, n)
        with pytest.raises(BadRequest, match="outside the body"):
            parse_infer_request(body, len(body) + 1)


class TestHeadersSeenBefore:
    """A binary request's JSON header is parsed once; what it says is kept by its exact bytes."""

    @pytest.fixture
    def loads(self, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
        calls: list[bytes] = []
        real = json.loads

        def counting(data: bytes) -> object:
            calls.append(data)
            return real(data)

        monkeypatch.setattr(protocol.json, "loads", counting)
        protocol._plans.clear()
        return calls

    def test_the_same_header_is_parsed_once_and_each_body_keeps_its_own_tensors(self, loads: list[bytes]) -> None:
        first, second = np.zeros((1, 4), np.float32), np.arange(4, dtype=np.float32).reshape(1, 4)
        body1, n = binary_body({"x": first}, id="r7", parameters={"binary_data_output": True, "timeout": 5000},
                               outputs=[{"name": "y"}])
        body2, n2 = binary_body({"x": second}, id="r7", parameters={"binary_data_output": True, "timeout": 5000},
                                outputs=[{"name": "y"}])
        a, b = parse_infer_request(body1, n), parse_infer_request(bytearray(body2), n2)
        assert len(loads) == 1
        np.testing.assert_array_equal(a.inputs["x"], first)
        np.testing.assert_array_equal(b.inputs["x"], second)
        assert not b.inputs["x"].flags.owndata  # still a view of its own body
        assert (b.id, b.outputs, b.binary_output, b.timeout_s) == ("r7", (RequestedOutput("y", True),), True, 0.005)

    def test_a_body_of_another_length_gets_every_check(self, loads: list[bytes]) -> None:
        body, n = binary_body({"x": np.zeros((2, 2), np.float32)})
        parse_infer_request(body, n)
        with pytest.raises(BadRequest, match="ends before"):
            parse_infer_request(body[:-4], n)
        with pytest.raises(BadRequest, match="declare"):
            parse_infer_request(body + b"\0", n)

    def test_json_data_is_parsed_every_time(self, loads: list[bytes]) -> None:
        body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode()
        parse_infer_request(body, len(body))
        parse_infer_request(body, len(body))
        assert len(loads) == 2

    def test_what_is_kept_is_bounded(self, loads: list[bytes]) -> None:
        for i in range(protocol.PLAN_CACHE_SIZE + 10):
            body, n = binary_body({"x": np.zeros((1, 2), np.float32)}, id=str(i))
            assert parse_infer_request(body, n).id == str(i)
        assert 0 < len(protocol._plans) <= protocol.PLAN_CACHE_SIZE


class TestDecodeBody:
    def test_gzip_and_deflate(self) -> None:
        raw = b'{"inputs": []}' * 10
        assert decode_body(gzip.compress(raw), "gzip", 1000) == raw
        assert decode_body(zlib.compress(raw), "deflate", 1000) == raw
        assert decode_body(raw, None, 1000) == raw

    def test_decompression_bomb_is_refused(self) -> None:
        with pytest.raises(PayloadTooLarge):
            decode_body(gzip.compress(b"\0" * 100_000), "gzip", 1000)

    def test_a_stream_cut_short_or_followed_by_more_bytes_is_refused(self) -> None:
        whole = gzip.compress(b'{"inputs": []}' * 10)
        with pytest.raises(BadRequest, match="truncated"):
            decode_body(whole[:-12], "gzip", 1000)
        with pytest.raises(BadRequest, match="3 bytes after its gzip stream"):
            decode_body(whole + b"abc", "gzip", 1000)
        with pytest.raises(BadRequest, match="truncated"):
            decode_body(zlib.compress(b"x" * 100)[:-3], "deflate", 1000)

    def test_unknown_encoding(self) -> None:
        with pytest.raises(BadRequest, match="br"):
            decode_body(b"x", "br", 10)


class TestEncode:
    def test_json_outputs(self) -> None:
        body, n = encode_infer_response(model="m", version="1", request_id="7",
                                        outputs=[("y", np.array([[1.5, 2.0]], np.float32), False)])
        assert n is None
        assert json.loads(body) == {"model_name": "m", "model_version": "1", "id": "7", "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}]}

    def test_binary_outputs_follow_the_header(self) -> None:
        y = np.arange(6, dtype=np.int64).reshape(3, 2)[1:]  # a view, as split() returns
        s = np.array([[True], [False]])
        body, n = encode_infer_response(model="m", version="1", request_id=None,
                                        outputs=[("y", y, True), ("s", s, False), ("e", np.zeros((0, 2), np.float32), True)])
        assert n is not None
        header = json.loads(body[:n])
        assert header["outputs"][0] == {"name": "y", "datatype": "INT64", "shape": [2, 2],
                                        "parameters": {"binary_data_size": 32}}
        assert header["outputs"][1]["data"] == [True, False]
        assert header["outputs"][2]["parameters"]["binary_data_size"] == 0
        np.testing.assert_array_equal(np.frombuffer(body[n:], np.int64).reshape(2, 2), y)


    def test_binary_answers_of_one_shape_share_a_header_and_differ_by_shape_and_id(self) -> None:
        def header(rows: int, rid: str | None) -> dict[str, object]:
            body, n = encode_infer_response(model="m", version="1", request_id=rid,
                                            outputs=[("y", np.full((rows, 3), rows, np.float32), True)])
            assert n is not None and len(body) == n + rows * 12
            np.testing.assert_array_equal(np.frombuffer(body[n:], np.float32), np.full(rows * 3, rows, np.float32))
            return json.loads(body[:n])

        assert header(1, None) == header(1, None)
        assert header(2, None)["outputs"][0]["shape"] == [2, 3]  # type: ignore[index]
        assert header(2, None)["outputs"][0]["parameters"] == {"binary_data_size": 24}  # type: ignore[index]
        assert header(1, "a")["id"] == "a" and header(1, "b")["id"] == "b"
        assert "id" not in header(1, None)

    def test_a_long_request_id_is_answered_but_not_kept(self) -> None:
        protocol._answer_headers.clear()
        rid = "r" * (protocol.ANSWER_ID_MAX_CHARS + 1)
        body, n = encode_infer_response(model="m", version="1", request_id=rid,
                                        outputs=[("y", np.zeros((1, 2), np.float32), True)])
        assert n is not None and json.loads(body[:n])["id"] == rid
        assert not protocol._answer_headers

    def test_no_outputs_is_a_json_answer(self) -> None:
        assert encode_infer_response(model="m", version="1", request_id=None, outputs=[])[1] is None


class TestMalformedValues:
    """Hostile bodies are 400s with a message, never 500s (P10: every malformed value is a 400)."""

    @pytest.mark.parametrize("body", [
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[99999999999999999999999]}]}',
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":' + b"[" * 100000 + b"]" * 100000 + b"}]}",
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1e400]}]}',
        b'{"inputs":[{"name":"x","shape":[100000000],"datatype":"FP32","data":[1]}]}',
        b'{"inputs":[{"name":"x","shape":[1],"datatype":["FP32"],"data":[1]}]}',
        b'{"inputs":[{"name":"x","shape":[1],"datatype":{},"data":[1]}]}',
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e308]}]}',
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":[70000]}]}',
        b'{"inputs":[{"name":"x","shape":[0,4611686018427387904,4],"datatype":"FP32","data":[]}]}',
        b'{"inputs":[{"name":"x","shape":' + json.dumps([1] * 65).encode() + b',"datatype":"FP32","data":[1]}]}',
    ], ids=["overflow", "deep-nesting", "float-into-int", "too-many-json-values", "datatype-list", "datatype-object",
            "beyond-fp32", "beyond-fp16", "no-values-beyond-any-shape", "more-dimensions-than-numpy-shapes"])
    def test_refused_as_bad_request(self, body: bytes) -> None:
        with pytest.raises(BadRequest):
            parse_infer_request(body, None)

    def test_a_shape_of_no_values_beyond_any_array_is_refused_and_a_large_empty_one_is_kept(self) -> None:
        header = b'{"inputs":[{"name":"x","shape":[0,4611686018427387904,4],"datatype":"FP32","parameters":' \
                 b'{"binary_data_size":0}}]}'
        with pytest.raises(BadRequest, match=r"shape \[0, 4611686018427387904, 4\] is beyond any tensor"):
            parse_infer_request(header, len(header))
        req = parse_infer_request(b'{"inputs":[{"name":"x","shape":[0,1099511627776],"datatype":"FP32","data":[]}]}',
                                  None)
        assert req.inputs["x"].shape == (0, 1099511627776)

    def test_beyond_the_range_says_so_and_inf_as_sent_is_kept(self) -> None:
        with pytest.raises(BadRequest, match="beyond the range of FP32"):
            parse_infer_request(b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1, 1e39]}]}', None)
        req = parse_infer_request(b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[Infinity, 1e38]}]}',
                                  None)
        assert np.isinf(req.inputs["x"][0]) and req.inputs["x"][1] == np.float32(1e38)

    def test_any_mangled_request_parses_or_is_a_bad_request(self) -> None:
        """Seeded mutations of a good JSON and a good binary request (a value of another type or range in any
        place, a field dropped, the body cut short, the header length moved): each parses or raises a ServeError
        (a 400 with a message), never another exception or a warning (pytest makes warnings errors here)."""
        import copy
        import random

        from trtop.serve.errors import ServeError

        odd: list[object] = [None, True, 0, -1, 2**64, 1e308, float("nan"), -0.5, "", "x", "BYTES", [], [1], [[1]],
                             {}, {"a": 1}, [None], ["a"], [2**70], [-1], [1.5], "9" * 400, {"binary_data_size": -1},
                             {"binary_data_size": 2**62}, {"shared_memory_region": 5}, [0, 2**62, 4], 10**400, [1] * 65,
                             {"timeout": 10**400}]
        rng = random.Random(8)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)

        def places(o: object, at: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
            inner = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
            return [at] + [p for k, v in inner for p in places(v, at + (k,))]

        outcomes = {"parsed": 0, "refused": 0}
        for _ in range(3000):
            binary = rng.random() < 0.5
            tensor: dict[str, object] = {"name": "x", "shape": [2, 4], "datatype": "FP32"}
            tensor.update({"parameters": {"binary_data_size": x.nbytes}} if binary else {"data": x.ravel().tolist()})
            doc: dict[str, object] = {"id": "r", "inputs": [tensor], "outputs": [{"name": "y", "parameters": {
                "binary_data": True}}], "parameters": {"timeout": 1000, "binary_data_output": True}}
            for _ in range(rng.randint(1, 3)):
                *path, last = rng.choice(places(doc)[1:])
                parent: object = doc
                for key in path:
                    parent = parent[key]  # type: ignore[index]
                if rng.random() < 0.8:
                    parent[last] = copy.deepcopy(rng.choice(odd))  # type: ignore[index]
                else:
                    del parent[last]  # type: ignore[attr-defined]
            header = json.dumps(doc).encode()
            body, length = header + (x.tobytes() if binary else b""), len(header) if binary else None
            if rng.random() < 0.2:
                body = body[:rng.randint(0, len(body))]
            if length is not None and rng.random() < 0.1:
                length = rng.choice([0, -1, len(body) + 1, length - 1, 2**40])
            try:
                parse_infer_request(body, length)
                outcomes["parsed"] += 1
            except ServeError:
                outcomes["refused"] += 1
        assert outcomes["parsed"] > 100 and outcomes["refused"] > 1000, outcomes
