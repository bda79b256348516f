"""Open Inference Protocol v2 wire format: parse infer requests, encode responses and metadata.

JSON tensors and Triton's binary tensor extension: the JSON header is followed by raw
tensor bytes, its length in the ``Inference-Header-Content-Length`` header; inputs carry
``parameters.binary_data_size``; outputs are returned binary when the request asks
(``outputs[].parameters.binary_data`` or the request-level ``binary_data_output``), which
is what ``tritonclient.http`` does by default for numpy data. Binary inputs become
numpy views of the body (``np.frombuffer``, no copy).

Pure functions over bytes and numpy (two bounded caches aside, keyed by the bytes they stand for: what a
binary request's header says, and answers' JSON headers); ``app`` calls them, the data plane never sees JSON.
"""
from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from trtop.api.engine import TensorSpec
from trtop.serve.errors import BadRequest, PayloadTooLarge
from trtop.serve.types import Array

if TYPE_CHECKING:
    from trtop.serve.shared_memory import Registry

# JSON "data" is parsed into Python objects first (~50 bytes each): beyond this, binary tensors are required.
MAX_JSON_VALUES = 4_000_000

# A tensor's dimensions other than zero may multiply to at most this many bytes: numpy describes arrays with
# 64-bit sizes, so a [0, 2**62, 4] tensor (no values, every size check passed) could not even be shaped.
MAX_SHAPE_BYTES = 1 << 62

# A tensor's dimensions: numpy shapes at most 64 (32 before numpy 2) and a reshape past that raises ValueError, not
# a refusal; TensorRT engines take 8. A request past this is refused before anything is shaped.
MAX_DIMS = 32

# A request's "timeout" parameter (microseconds) longer than this is taken as this: a client that sends a huge one
# means "no timeout of mine", and a deadline of 10**300 us is not a number the server's clocks can add.
MAX_TIMEOUT_US = 86_400 * 1_000_000  # a day

# v2 datatype <-> numpy dtype name. BYTES (strings) and BF16 have no numpy dtype here.
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
V2_OF_NUMPY: dict[str, str] = {v: k for k, v in DATATYPES.items()}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    # Asked into a shared memory region (name, offset, byte size): the answer carries no bytes of it.
    region: tuple[str, int, int] | None = None


# Parameters of Triton's system shared memory extension on an input or a requested output.
SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"


Body = bytes | bytearray | memoryview  # a request body: bytes, or the buffer it was read into


class Held(Protocol):
    """A buffer that must outlive every use of its bytes (a front-end's shared-memory region):
    a user takes a reference while it uses them and gives it back after."""

    def hold(self) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, Array]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output of the model
    binary_output: bool  # default form for outputs not named (request parameter binary_data_output)
    timeout_s: float | None  # request parameter "timeout" (microseconds, as Triton)
    buffer: Held | None = None  # what the binary inputs are views of, when it is given back (else None)


def v2_datatype(dtype: str) -> str:
    """The v2 datatype name of a numpy dtype name (``float32`` -> ``FP32``)."""
    return V2_OF_NUMPY.get(dtype, dtype.upper())


def decode_body(body: Body, encoding: str | None, limit: int) -> Body:
    """Undo ``Content-Encoding: gzip|deflate`` (what tritonclient's request compression sends)."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the {encoding} body could not be decompressed: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body is larger than the limit of {limit} bytes")
    if not d.eof:  # a stream cut short would otherwise be taken as the whole request
        raise BadRequest(f"the {encoding} body ends before its stream does (truncated)")
    if d.unused_data:
        raise BadRequest(f"the body has {len(d.unused_data)} bytes after its {encoding} stream")
    return out


# An input's name, dtype, shape, count, offset and shared memory region (None: the offset is in the body's
# binary part; else in the region).
Place = tuple[str, "np.dtype[Any]", tuple[int, ...], int, int, "str | None"]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a binary request's JSON header says, once checked: its inputs' places in the binary part and
    the request's parameters (``parse_infer_request`` keeps these by the header's exact bytes)."""
    inputs: tuple[Place, ...]
    binary_bytes: int
    id: str | None
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool
    timeout_s: float | None
    in_regions: bool  # some input is in a shared memory region

    def request(self, binary: memoryview, buffer: Held | None, regions: Registry | None) -> InferRequest:
        if not self.in_regions:
            inputs = {name: np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
                      for name, dtype, shape, count, offset, _ in self.inputs}
        else:
            inputs = {}
            for name, dtype, shape, count, offset, region in self.inputs:
                if region is None:
                    inputs[name] = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
                else:  # the region is looked up (and its object's size checked) for every request
                    window = _window(regions, {SHM_REGION: region, SHM_OFFSET: offset}, count * dtype.itemsize,
                                     f"input {name!r}")
                    inputs[name] = np.frombuffer(window, dtype=dtype, count=count).reshape(shape)
        return InferRequest(id=self.id, inputs=inputs, outputs=self.outputs, binary_output=self.binary_output,
                            timeout_s=self.timeout_s, buffer=buffer)


# A client sends the same JSON header with every request of one shape (tritonclient, perf_analyzer: only
# the tensor bytes change), so a binary request's header is parsed and checked once and what it says is
# kept by its exact bytes: parsing a light model's lone request took 52 us before and 12.5 after on the
# development machine (bench/stages.py; the event loop is that model's limit on two cores). What is kept
# follows from the bytes alone, so a request gets exactly what a full parse would give it. Bounded: emptied
# when full (headers that carry a request id differ every time and only churn it); JSON data is never kept.
PLAN_CACHE_SIZE = 256
PLAN_HEADER_MAX_BYTES = 4096
_plans: dict[bytes, _Plan] = {}


def parse_infer_request(body: Body, header_length: int | None, buffer: Held | None = None,
                        regions: Registry | None = None) -> InferRequest:
    """An ``InferRequest`` from a body (JSON, or JSON header + binary tensors); ``buffer``: what holds
    the body's bytes when it must be given back after use (the binary inputs are views of it); ``regions``:
    the shared memory regions inputs and outputs may name (None: none may)."""
    if header_length is None:  # all JSON: a request whose tensors are all in shared memory regions has a plan
        header_bytes, binary = body, memoryview(b"")
    else:
        if not 0 < header_length <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)")
        header_bytes, binary = bytes(body[:header_length]), memoryview(body)[header_length:]
    if len(header_bytes) <= PLAN_HEADER_MAX_BYTES:
        plan = _plans.get(bytes(header_bytes))
        if plan is not None and plan.binary_bytes == len(binary):
            return plan.request(binary, buffer, regions)
    request, places = _parse_document(header_bytes, header_length, binary, buffer, regions)
    if places is not None and len(header_bytes) <= PLAN_HEADER_MAX_BYTES:
        if len(_plans) >= PLAN_CACHE_SIZE:
            _plans.clear()
        _plans[bytes(header_bytes)] = _Plan(places, len(binary), request.id, request.outputs, request.binary_output,
                                            request.timeout_s, any(p[5] is not None for p in places))
    return request


def _parse_document(header_bytes: Body, header_length: int | None, binary: memoryview, buffer: Held | None,
                    regions: Registry | None) -> tuple[InferRequest, tuple[Place, ...] | None]:
    """The request, and its inputs' places in the binary part when every input is binary (else None)."""
    try:
        doc = json.loads(bytes(header_bytes))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        hint = "" if header_length is not None else " (binary tensors need the Inference-Header-Content-Length header)"
        raise BadRequest(f"the request is not valid JSON: {exc}{hint}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest('the request must be a JSON object with a non-empty "inputs" list')
    params = _object(doc.get("parameters"), "parameters")
    inputs: dict[str, Array] = {}
    places: list[Place] | None = []
    offset = 0
    for raw in doc["inputs"]:
        name, array, used = _parse_input(raw, binary, offset, regions)
        if name in inputs:
            raise BadRequest(f"input {name!r} appears twice in the request")
        inputs[name] = array
        region = raw["parameters"] if isinstance(raw.get("parameters"), dict) and SHM_REGION in raw["parameters"] \
            else None
        if places is not None and "data" not in raw:
            places.append((name, array.dtype, array.shape, array.size, offset, None) if region is None else
                          (name, array.dtype, array.shape, array.size, region.get(SHM_OFFSET, 0), region[SHM_REGION]))
        else:
            places = None  # JSON data: its values are in the header itself
        offset += used
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary)} bytes of binary tensor data but the inputs declare {offset}")
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise BadRequest('"outputs" must be a list')
        outputs = tuple(_parse_output(o, bool(params.get("binary_data_output", False)), regions)
                        for o in doc["outputs"])
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
        raise BadRequest(TIMEOUT_MESSAGE)
    rid = doc.get("id")
    request = InferRequest(
        id=None if rid is None else str(rid), inputs=inputs, outputs=outputs,
        binary_output=bool(params.get("binary_data_output", False)),
        timeout_s=None if timeout is None else timeout_seconds(timeout), buffer=buffer,
    )
    return request, None if places is None else tuple(places)


TIMEOUT_MESSAGE = 'parameter "timeout" must be a positive integer (microseconds)'


def timeout_seconds(us: int) -> float:
    """A request's ``timeout`` parameter (microseconds, HTTP and gRPC alike) in seconds, at most ``MAX_TIMEOUT_US``."""
    if us <= 0:
        raise BadRequest(TIMEOUT_MESSAGE)
    return min(us, MAX_TIMEOUT_US) / 1e6


def tensor_count(name: str, shape: Sequence[int], dtype: np.dtype[Any]) -> int:
    """The values an input of ``shape`` holds; BadRequest where the shape is beyond any array."""
    if len(shape) > MAX_DIMS:
        raise BadRequest(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    if math.prod(d for d in shape if d) * dtype.itemsize >= MAX_SHAPE_BYTES:
        raise BadRequest(f"input {name!r}: shape {list(shape)} is beyond any tensor")
    return math.prod(shape)


def _parse_input(raw: Any, binary: memoryview, offset: int, regions: Registry | None) -> tuple[str, Array, int]:
    """An input's name, its array and the bytes of the binary part it used."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest('each input must be an object with a "name"')
    name = raw["name"]
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f'input {name!r}: "shape" must be a list of non-negative integers, got {shape!r}')
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list or an object is no key (TypeError)
        raise BadRequest(f"input {name!r}: datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}")
    dtype = np.dtype(DATATYPES[datatype])
    count = tensor_count(name, shape, dtype)
    params = _object(raw.get("parameters"), f"input {name!r} parameters")
    if SHM_REGION in params:
        return name, input_in_region(name, params, dtype, shape, count, "data" in raw, regions), 0
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise BadRequest(f"input {name!r} has both JSON data and binary_data_size")
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise BadRequest(f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                             f"{datatype} ({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: the body ends before its {size} bytes of binary data")
        return name, np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape), size
    if "data" not in raw:
        raise BadRequest(f'input {name!r} has neither "data" nor parameters.binary_data_size')
    if count > MAX_JSON_VALUES:
        raise BadRequest(f"input {name!r}: {count} values is too many for JSON data (at most {MAX_JSON_VALUES}); "
                         "send large tensors as binary data (Inference-Header-Content-Length)")
    try:
        # A finite number beyond the type's range (1e308 as FP32) is refused, not turned into inf with a warning
        # in the server's log for every such request; inf and nan, which JSON can spell, are kept as sent.
        with np.errstate(over="raise"):
            array = np.asarray(raw["data"], dtype=dtype)
    except FloatingPointError:
        raise BadRequest(f"input {name!r}: data has values beyond the range of {datatype}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadRequest(f"input {name!r}: data is not a list of {datatype} values ({exc})") from None
    if array.size != count:
        raise BadRequest(f"input {name!r}: data has {array.size} values but shape {shape} needs {count}")
    return name, array.reshape(shape), 0


def input_in_region(name: str, params: Mapping[str, Any], dtype: np.dtype[Any], shape: list[int], count: int,
                     has_data: bool, regions: Registry | None) -> Array:
    """An input named by its shared memory region: a view of the region's bytes (the caller copies it where
    it must outlive the request's handling)."""
    what = f"input {name!r}"
    if regions is None:  # the first thing to know when the server has it off
        _window(regions, params, 0, what)
    if has_data or "binary_data_size" in params:
        raise BadRequest(f"{what} names a shared memory region and also carries data; send one of them")
    size = params.get(SHM_BYTE_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
        raise BadRequest(f"{what}: {SHM_BYTE_SIZE} {size!r} does not match shape {shape} of "
                         f"{v2_datatype(dtype.name)} ({count * dtype.itemsize} bytes)")
    window = _window(regions, params, size, what)
    return np.frombuffer(window, dtype=dtype, count=count).reshape(shape)


def _window(regions: Registry | None, params: Mapping[str, Any], nbytes: int, what: str) -> memoryview:
    from trtop.serve.shared_memory import OFF_MESSAGE

    if regions is None:
        raise BadRequest(f"{what}: {OFF_MESSAGE}")
    return regions.window(params[SHM_REGION], params.get(SHM_OFFSET, 0), nbytes, what)


def _parse_output(raw: Any, default_binary: bool, regions: Registry | None = None) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest('each requested output must be an object with a "name"')
    params = _object(raw.get("parameters"), f"output {raw['name']!r} parameters")
    if params.get("classification"):
        raise BadRequest("the classification extension is not supported by this server")
    if SHM_REGION in params:
        return RequestedOutput(raw["name"], False, output_region(raw["name"], params, regions))
    return RequestedOutput(raw["name"], bool(params.get("binary_data", default_binary)))


def output_region(name: str, params: Mapping[str, Any], regions: Registry | None) -> tuple[str, int, int]:
    """(region, offset, byte size) an output is asked into, checked now (a request naming a region that is not
    there, or a window past its end, is refused before it runs)."""
    size = params.get(SHM_BYTE_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise BadRequest(f"output {name!r}: {SHM_BYTE_SIZE} must be a positive integer, got {size!r}")
    _window(regions, params, size, f"output {name!r}")
    return params[SHM_REGION], params.get(SHM_OFFSET, 0), size


def write_outputs_to_regions(regions: Registry | None, outputs: Sequence[tuple[RequestedOutput, Array]]) -> None:
    """Copy the outputs asked into shared memory regions there (BadRequest when one does not fit its window)."""
    for requested, array in outputs:
        if requested.region is None:
            continue
        region, offset, size = requested.region
        what = f"output {requested.name!r}"
        if array.nbytes > size:
            raise BadRequest(f"{what} has {array.nbytes} bytes ({v2_datatype(array.dtype.name)}{list(array.shape)}); "
                             f"its shared memory window has {size}")
        window = _window(regions, {SHM_REGION: region, SHM_OFFSET: offset}, array.nbytes, what)
        np.copyto(np.frombuffer(window, dtype=array.dtype, count=array.size).reshape(array.shape), array)


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def encode_infer_response(
    *, model: str, version: str, request_id: str | None, outputs: Sequence[tuple[str, Array, bool]],
    in_regions: Mapping[str, tuple[str, int, int]] | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length. ``in_regions``: outputs
    already written into shared memory regions (name -> region, offset, byte size): listed, not carried."""
    if outputs and (request_id is None or len(request_id) <= ANSWER_ID_MAX_CHARS) and all(
            binary or (in_regions and name in in_regions) for name, _, binary in outputs):
        # the header depends on names, dtypes, shapes, regions and the id only
        key = (model, version, request_id, tuple((name, a.dtype, a.shape) for name, a, _ in outputs),
               tuple(in_regions.items()) if in_regions else ())
        kept = _answer_headers.get(key)
        if kept is None:
            kept = _answer_headers[key] = _answer_header(model, version, request_id, outputs, in_regions)
            if len(_answer_headers) > PLAN_CACHE_SIZE:
                _answer_headers.clear()
        header = kept
    else:
        header = _answer_header(model, version, request_id, outputs, in_regions)
    chunks = [_raw(np.ascontiguousarray(a)) for _, a, binary in outputs if binary]
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


# The JSON headers of answers whose outputs are all binary, by model, version, request id and the outputs'
# names, dtypes and shapes (the same for every answer of a batch size): built once (~8 us each). Bounded
# like _plans; a request id (the client's) is kept only when short: the entries stay small.
_answer_headers: dict[tuple[Any, ...], bytes] = {}
ANSWER_ID_MAX_CHARS = 128


def _answer_header(model: str, version: str, request_id: str | None, outputs: Sequence[tuple[str, Array, bool]],
                   in_regions: Mapping[str, tuple[str, int, int]] | None = None) -> bytes:
    """An answer's JSON header: binary outputs by their size (their bytes follow it), outputs written to shared
    memory by their name, datatype and shape only, others with their data."""
    entries: list[dict[str, Any]] = []
    for name, a, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(a.dtype.name), "shape": list(a.shape)}
        if in_regions and name in in_regions:
            pass  # in its region: no data, and no parameters (Triton's C++ client reads any as binary_data_size's)
        elif binary:
            entry["parameters"] = {"binary_data_size": a.nbytes}
        else:
            entry["data"] = a.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    return json.dumps(doc, separators=(",", ":")).encode()


def _raw(array: Array) -> memoryview | bytes:
    # A byte view of a C-contiguous array (no copy before the join); empty arrays cannot be cast.
    return array.data.cast("B") if array.size else b""


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": v2_datatype(spec.dtype), "shape": list(spec.shape)}
