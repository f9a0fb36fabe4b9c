"""The KServe v2 inference body, including Triton's binary tensor extension.

Both directions are here, for both sides of the gateway: the HTTP edge decodes client
requests and encodes responses; the Triton backend encodes requests and decodes
responses. It is a pure leaf module (numpy and orjson only).

A request is a JSON header, optionally followed by raw tensor bytes; the header's
length is given by ``Inference-Header-Content-Length`` and each binary input names
its size in ``parameters.binary_data_size``. ``BYTES`` elements are serialised as a
4-byte little-endian length followed by the bytes. Decoding never trusts a declared
size or shape: every mismatch is an :class:`~image_router.errors.InvalidRequest` naming the
tensor.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from image_router.errors import InvalidRequest

__all__ = [
    "InferRequest",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "raw_tensor",
    "tensor",
    "wants_binary",
]

_NUMERIC = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_LITTLE_ENDIAN = {name: np.dtype(kind).newbyteorder("<") for name, kind in _NUMERIC.items()}


@dataclass
class InferRequest:
    inputs: dict[str, NDArray[Any]]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] | None = None


def _object(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a JSON object (absent means empty), else a 400 naming ``where``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be an object", field=where)
    return value


def _dimension(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _flat(data: Any, name: str) -> list[Any]:
    """KServe JSON ``data``: a list, flat or nested row-major."""
    if not isinstance(data, list):
        raise InvalidRequest(f"{name}: data must be a list", field=name)
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], stack)
        if item is stack:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


def _bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"{name}: truncated BYTES element", field=name)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidRequest(f"{name}: BYTES element overruns its data", field=name)
        out.append(raw[offset : offset + length])
        offset += length
    if len(out) != count:
        raise InvalidRequest(f"{name}: shape asks for {count} elements, data has {len(out)}", field=name)
    return out


def tensor(spec: dict[str, Any], binary: memoryview | None, name: str) -> NDArray[Any]:
    """One input tensor from its spec (``datatype``, ``shape``, JSON ``data``) or its raw
    bytes (``binary``: Triton's binary extension, or gRPC's ``raw_input_contents``)."""
    datatype = spec.get("datatype")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_dimension(d) for d in shape):
        raise InvalidRequest(f"{name}: shape must be a list of non-negative integers", field=name)
    count = math.prod(shape)
    if datatype == "BYTES":
        if binary is not None:
            elements = _bytes_elements(bytes(binary), count, name)
        else:
            data = _flat(spec.get("data", []), name)
            if len(data) != count:
                raise InvalidRequest(f"{name}: shape asks for {count} elements, data has {len(data)}", field=name)
            if not all(isinstance(v, str) for v in data):
                raise InvalidRequest(f"{name}: BYTES data must be strings", field=name)
            elements = [v.encode("utf-8", "surrogatepass") for v in data]
        return np.array(elements, dtype=object).reshape(shape)
    dtype = _LITTLE_ENDIAN.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidRequest(f"{name}: unsupported datatype {datatype!r}", field=name)
    if binary is not None:
        if len(binary) != count * dtype.itemsize:
            raise InvalidRequest(f"{name}: {len(binary)} bytes do not fit shape {shape}", field=name)
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    try:
        array = np.asarray(_flat(spec.get("data", []), name), dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest(f"{name}: data does not match datatype {datatype}", field=name) from None
    if array.size != count:
        raise InvalidRequest(f"{name}: shape asks for {count} elements, data has {array.size}", field=name)
    return array.reshape(shape)


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse a v2 infer request body (JSON, or JSON + binary tensors)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidRequest("Inference-Header-Content-Length is out of range")
    head = body if header_length is None else body[:header_length]
    try:
        header = orjson.loads(head)  # bounded nesting (1024) and strict UTF-8, in C
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"inference header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidRequest("inference header needs an 'inputs' list", field="inputs")
    parameters = _object(header.get("parameters"), "parameters")
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidRequest("outputs must be a list", field="outputs")
        for i, output in enumerate(outputs):
            if not isinstance(output, dict):
                raise InvalidRequest(f"outputs[{i}] must be an object", field=f"outputs[{i}]")
            _object(output.get("parameters"), f"outputs[{i}].parameters")
    tail = memoryview(body)[len(head) :]
    offset = 0
    inputs: dict[str, NDArray[Any]] = {}
    for i, spec in enumerate(header["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise InvalidRequest(f"inputs[{i}] needs a name", field=f"inputs[{i}]")
        name = spec["name"]
        size = _object(spec.get("parameters"), f"inputs[{i}].parameters").get("binary_data_size")
        binary = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(tail):
                raise InvalidRequest(f"{name}: binary_data_size exceeds the body", field=name)
            binary = tail[offset : offset + size]
            offset += size
        inputs[name] = tensor(spec, binary, name)
    if offset != len(tail):
        raise InvalidRequest("body has binary data no input claims")
    rid = header.get("id")
    return InferRequest(inputs, str(rid) if rid is not None else None, parameters, outputs)


def wants_binary(request: InferRequest, output: str) -> bool:
    """Whether the client asked for ``output`` as binary data."""
    for spec in request.outputs or []:  # each an object with object parameters (decode checks)
        if spec.get("name") == output:
            return bool((spec.get("parameters") or {}).get("binary_data", False))
    return bool(request.parameters.get("binary_data_output", False))


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    name: str,
    array: NDArray[Any],
    binary: bool,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode one UINT8 output tensor; returns the body and the JSON header length."""
    output: dict[str, Any] = {"name": name, "datatype": "UINT8", "shape": list(array.shape)}
    flat = np.ascontiguousarray(array, dtype=np.uint8).reshape(-1)
    if binary:
        output["parameters"] = {"binary_data_size": flat.size}
    else:
        output["data"] = flat  # orjson writes a numpy array in C (tolist + json.dumps: ~25x slower)
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": [output]}
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if binary:
        return head + flat.tobytes(), len(head)
    return head, None


def _serialize_bytes(values: NDArray[Any]) -> bytes:
    parts = []
    for value in values.reshape(-1):
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def raw_tensor(datatype: str, array: NDArray[Any]) -> bytes:
    """A tensor's raw bytes as both protocols carry them (BYTES: length-prefixed)."""
    return _serialize_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()


def encode_request(
    inputs: list[tuple[str, str, NDArray[Any]]], parameters: dict[str, Any], binary_outputs: list[str]
) -> tuple[bytes, int]:
    """Encode an infer request with every input as binary data; returns body, header length."""
    specs, blobs = [], []
    for name, datatype, array in inputs:
        raw = raw_tensor(datatype, array)
        specs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    header: dict[str, Any] = {
        "inputs": specs,
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in binary_outputs],
    }
    if parameters:
        header["parameters"] = parameters
    head = orjson.dumps(header)  # the stdlib encoder was ~9% of the gateway's busy CPU here
    return b"".join([head, *blobs]), len(head)


def decode_response(
    body: bytes, header_length: int | None, output: str, header: Any = None
) -> tuple[NDArray[Any], str]:
    """One UINT8 output tensor and the model version from Triton's answer (JSON or
    binary). Raises ``ValueError`` on anything malformed: a backend's bug, not the
    client's, so the caller maps it to a backend error. ``header``: the answer's JSON
    header already parsed (a caller reading two outputs parses it once)."""
    head = body if header_length is None else body[:header_length]
    if header is None:
        header = orjson.loads(head)
    if not isinstance(header, dict) or not isinstance(header.get("outputs"), list):
        raise ValueError("no outputs list")
    offset = len(head)
    for spec in header["outputs"]:
        parameters = spec.get("parameters") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(parameters or {}, dict):
            raise ValueError("an output is not an object with object parameters")
        size = (parameters or {}).get("binary_data_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ValueError("binary_data_size is not a size")
        if spec.get("name") != output:
            offset += size or 0
            continue
        if spec.get("datatype") != "UINT8":
            raise ValueError(f"{output} is {spec.get('datatype')}, not UINT8")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(_dimension(d) for d in shape):
            raise ValueError(f"{output} has no valid shape")
        if size is None:
            try:
                values = _flat(spec.get("data", []), output)
                if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values):
                    raise TypeError("a value is not a byte (0-255)")
                array = np.asarray(values, dtype=np.uint8)
            except (InvalidRequest, TypeError, OverflowError) as exc:  # not the client's fault here
                raise ValueError(f"{output}: data is not a list of bytes: {exc}") from None
        else:
            if offset + size > len(body):
                raise ValueError(f"{output}: binary_data_size exceeds the body")
            array = np.frombuffer(body, dtype=np.uint8, count=size, offset=offset)
        if array.size != math.prod(shape):
            raise ValueError(f"{output}: {array.size} values do not fit shape {shape}")
        return array.reshape(shape), str(header.get("model_version", ""))
    raise ValueError(f"no {output} output")
