"""KServe v2 body decoding/encoding, checked against tritonclient's own encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from router.errors import InvalidRequest
from router.kserve import decode_request, encode_response, wants_binary


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
