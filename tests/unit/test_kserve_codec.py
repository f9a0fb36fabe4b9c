"""KServe v2 body decoding/encoding, checked against tritonclient's own encoder."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.http._utils import _get_inference_request

from image_router.errors import InvalidRequest
from image_router.http.kserve_api import parse_infer
from image_router.kserve import decode_request, decode_response, encode_response, wants_binary


def _client_body(binary: bool) -> tuple[bytes, int | None]:
    prompt = httpclient.InferInput("PROMPT", [2, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a fox"], ["ein Fuchs \u00fc".encode()]], dtype=object), binary_data=binary)
    seed = httpclient.InferInput("SEED", [2, 1], "INT64")
    seed.set_data_from_numpy(np.array([[1], [2]], dtype=np.int64), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    return _get_inference_request([prompt, seed], "req-1", outputs, 0, False, False, 0, None, None)


@pytest.mark.parametrize("binary", [True, False])
def test_decodes_what_tritonclient_encodes(binary: bool) -> None:
    body, header_length = _client_body(binary)
    request = decode_request(body, header_length)
    assert request.id == "req-1"
    assert request.inputs["PROMPT"].reshape(-1).tolist() == [b"a fox", "ein Fuchs \u00fc".encode()]
    assert request.inputs["SEED"].reshape(-1).tolist() == [1, 2]
    assert wants_binary(request, "IMAGE")


def test_encoded_response_is_read_by_tritonclient() -> None:
    image = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    body, header_length = encode_response("draft", "1", "abc", "IMAGE", image, binary=True)
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    assert result.get_response()["model_name"] == "draft"
    np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)
    body, header_length = encode_response("draft", "1", None, "IMAGE", image, binary=False)
    assert header_length is None
    np.testing.assert_array_equal(httpclient.InferResult.from_response_body(body).as_numpy("IMAGE"), image)


@pytest.mark.parametrize("binary", [True, False])
def test_decode_response_reads_what_the_encoder_writes(binary: bool) -> None:
    image = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    body, header_length = encode_response("draft", "3", "abc", "IMAGE", image, binary=binary)
    decoded, version = decode_response(body, header_length, "IMAGE")
    np.testing.assert_array_equal(decoded, image)
    assert version == "3"


def test_decode_response_skips_other_binary_outputs() -> None:
    head = json.dumps(
        {
            "model_version": "1",
            "outputs": [
                {"name": "MASK", "datatype": "UINT8", "shape": [2], "parameters": {"binary_data_size": 2}},
                {"name": "IMAGE", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
            ],
        }
    ).encode()
    decoded, _ = decode_response(head + b"\x01\x02\x07\x08\x09", len(head), "IMAGE")
    assert decoded.tolist() == [7, 8, 9]


_OVERRUN = b'{"inputs": [{"name": "P", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}}]}'


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"\x00\xff garbage", None, "not valid JSON"),
        (b'{"inputs": 3}', None, "'inputs' list"),
        (b'{"inputs": [{"name": "P", "datatype": "BYTES", "shape": [2], "data": ["x"]}]}', None, "asks for 2"),
        (b'{"inputs": [{"name": "P", "datatype": "BYTES", "shape": [-1], "data": []}]}', None, "non-negative"),
        (b'{"inputs": [{"name": "S", "datatype": "INT64", "shape": [1], "data": ["x"]}]}', None, "match datatype"),
        (b'{"inputs": [{"name": "S", "datatype": "COMPLEX", "shape": [1], "data": [1]}]}', None, "unsupported"),
        (_OVERRUN, len(_OVERRUN), "exceeds the body"),
        (b'{"inputs": []}xx', 14, "no input claims"),
        (b'{"inputs": []}', 999, "out of range"),
    ],
)
def test_malformed_bodies_are_invalid_requests(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_request(body, header_length)


def test_truncated_bytes_element_is_rejected() -> None:
    header = json.dumps(
        {"inputs": [{"name": "P", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}
    ).encode()
    with pytest.raises(InvalidRequest, match="overruns"):
        decode_request(header + b"\x09\x00\x00\x00ab", len(header))


# -- fuzzing: every malformed body is a 400 naming what is wrong, never a 500 ---------------

_KEYS = ["inputs", "outputs", "parameters", "name", "shape", "datatype", "data", "binary_data_size", "binary_data",
         "id", "intent", "PROMPT", "SEED", "STEPS", "WIDTH", "HEIGHT"]  # fmt: skip
_DATATYPES = ["BYTES", "INT64", "INT32", "UINT64", "FP32", "BOOL", "", "STRING"]


def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    keys = st.sampled_from(_KEYS) | st.text(max_size=4)
    return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5)


_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
_json = st.recursive(_scalars, _containers, max_leaves=25)
_input = st.fixed_dictionaries(
    {"name": st.sampled_from(["PROMPT", "SEED", "STEPS", "WIDTH", "HEIGHT", ""]) | _json},
    optional={
        "shape": st.lists(st.integers(-2, 3) | _json, max_size=3) | _json,
        "datatype": st.sampled_from(_DATATYPES) | _json,
        "data": st.lists(st.text(max_size=8) | st.integers(-(2**65), 2**65) | _json, max_size=4) | _json,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-3, 40) | _json}) | _json,
    },
)


def _json_for_responses() -> st.SearchStrategy[object]:
    output = st.fixed_dictionaries(
        {"name": st.sampled_from(["IMAGE", "X"]) | _json},
        optional={
            "datatype": st.sampled_from(["UINT8", "INT8"]) | _json,
            "shape": st.lists(st.integers(-1, 3), max_size=4) | _json,
            "data": st.lists(st.integers(-1, 300), max_size=4) | _json,
            "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-2, 30) | _json}) | _json,
        },
    )
    return output | _json


_header = st.fixed_dictionaries(
    {"inputs": st.lists(_input, max_size=4) | _json},
    optional={"outputs": st.lists(_json, max_size=2) | _json, "parameters": _json, "id": _json},
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_header | _json, tail=st.binary(max_size=48), length=st.sampled_from(["exact", "none", "junk"]))
def test_generated_bodies_are_decoded_or_refused_with_a_400(header: object, tail: bytes, length: str) -> None:
    """Generated headers — well-formed, half-formed and arbitrary JSON — with a random
    binary tail: parsing either succeeds or raises InvalidRequest, nothing else."""
    head = json.dumps(header).encode()
    header_length = {"exact": str(len(head)), "none": None, "junk": "-1"}[length]
    try:
        parse_infer(head + tail if header_length else head, header_length)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message


PROMPT_X = {"name": "PROMPT", "shape": [1], "datatype": "BYTES", "data": ["x"]}


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [{"name": "", "shape": [], "datatype": "", "parameters": [null, null], "data": []}]}',
        json.dumps({"inputs": [{**PROMPT_X, "datatype": ["BYTES"]}]}).encode(),
        json.dumps({"inputs": [{**PROMPT_X, "data": [{"a": 1}]}]}).encode(),
        json.dumps({"inputs": [PROMPT_X], "outputs": [{"name": "IMAGE", "parameters": 7}]}).encode(),
        json.dumps(
            {"inputs": [PROMPT_X, {"name": "STEPS", "shape": [1], "datatype": "UINT64", "data": [2**64 - 1]}]}
        ).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["parameters-list", "datatype-list", "bytes-object", "output-parameters", "steps-overflow", "deep-nesting"],
)
def test_malformed_bodies_found_by_measuring_are_400s(body: bytes) -> None:
    """Each of these got a 500 (or a 503 after a backend overflow) before."""
    with pytest.raises(InvalidRequest):
        parse_infer(body, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.fixed_dictionaries({"outputs": st.lists(_json_for_responses(), max_size=3)}) | _json_for_responses(),
       tail=st.binary(max_size=24))  # fmt: skip
def test_decode_response_fails_only_with_value_error(header: object, tail: bytes) -> None:
    """A broken Triton answer is the backend's fault: a ``ValueError`` the backend maps
    to a backend error, never an exception that escapes as a 500."""
    head = json.dumps(header).encode()
    for length in (len(head), None):
        with contextlib.suppress(ValueError):
            decode_response(head + tail if length else head, length, "IMAGE")


# -- the gRPC edge: protobuf messages and Triton's request parameters -------------------

_DATATYPES = st.sampled_from(["BYTES", "INT64", "INT32", "UINT8", "FP32", "BOOL", "FP16", "", "STRING", "INT128"])


@st.composite
def _infer_messages(draw: st.DrawFn) -> object:
    from tritonclient.grpc import service_pb2 as pb

    message = pb.ModelInferRequest(model_name=draw(st.text(max_size=8)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["PROMPT", "SEED", "STEPS", "WIDTH", "X", ""]))
        shape = draw(st.lists(st.integers(-2, 4), max_size=3))
        spec = message.inputs.add(name=name, datatype=draw(_DATATYPES), shape=shape)
        if raw:
            message.raw_input_contents.append(draw(st.binary(max_size=24)))
        else:
            spec.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=6), max_size=3)))
            spec.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)))
    if draw(st.booleans()) and message.raw_input_contents:
        message.raw_input_contents.append(b"extra")
    return message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=_infer_messages())
def test_generated_grpc_messages_are_decoded_or_refused_with_invalid_request(message: object) -> None:
    from image_router.inference import image_request
    from image_router.rpc.tensors import decode_inputs

    with contextlib.suppress(InvalidRequest):
        image_request(decode_inputs(message))


@pytest.mark.parametrize(
    ("parameters", "priority", "budget_s"),
    [
        ({}, None, None),
        ({"priority": 0, "timeout": 0}, None, None),  # Triton's "default" and "none"
        ({"priority": 1, "timeout": 250_000}, 1, 0.25),
        ({"priority": 9}, 3, None),  # past the gateway's levels: its lowest
    ],
)
def test_priority_and_timeout_are_read_as_triton_reads_them(
    parameters: dict[str, object], priority: int | None, budget_s: float | None
) -> None:
    from image_router.inference import infer_options

    options = infer_options(parameters)
    assert (options.priority, options.budget_s) == (priority, budget_s)


@pytest.mark.parametrize("parameters", [{"priority": -1}, {"timeout": "soon"}, {"priority": True}, {"timeout": 1.5}])
def test_bad_priority_or_timeout_is_a_400_naming_it(parameters: dict[str, object]) -> None:
    from image_router.inference import infer_options

    with pytest.raises(InvalidRequest, match="parameters"):
        infer_options(parameters)
