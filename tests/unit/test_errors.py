"""One error tree: stable codes, and every foreign exception mapped at the boundary."""

from __future__ import annotations

import base64
import io
import zlib

import aiohttp
import orjson
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

import image_router.errors as errors
from image_router.backends._http1 import StaleConnection
from image_router.backends.base import ImageResult
from image_router.backends.openai import parse_images
from image_router.backends.triton import map_triton_error


def _all_errors() -> list[type[errors.RouterError]]:
    out, todo = [], [errors.RouterError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_codes_are_unique_snake_case_and_statuses_are_http() -> None:
    classes = _all_errors()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert cls.code.replace("_", "").isalpha() and cls.code.islower()
        assert 400 <= cls.status < 600
        assert cls.__name__ in errors.__doc__  # type: ignore[operator]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (InferenceServerException("PROMPT: must not be empty", status="400"), errors.BackendRejected),
        (InferenceServerException("Exceeds maximum queue size", status="503"), errors.BackendUnavailable),
        (InferenceServerException("Request timeout expired", status="503"), errors.BackendTimeout),
        (InferenceServerException("model not found", status="404"), errors.BackendUnavailable),
        (InferenceServerException("odd", status="418"), errors.BackendError),
        (aiohttp.ServerDisconnectedError(), errors.BackendUnavailable),
        (ConnectionRefusedError(), errors.BackendUnavailable),
        (aiohttp.ClientPayloadError("broken"), errors.BackendError),
        (ValueError("what"), errors.BackendError),
    ],
)
def test_triton_failures_are_mapped(exc: BaseException, expected: type[errors.RouterError]) -> None:
    mapped = map_triton_error(exc)
    assert type(mapped) is expected


def _b64(fmt: str) -> str:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_hosted_answer_is_kept_encoded_in_its_own_format(fmt: str) -> None:
    text = _b64(fmt)
    encoded = parse_images(orjson.dumps({"data": [{"b64_json": text}, {"b64_json": text}]}))
    assert encoded.fmt == fmt.lower() and encoded.b64 == (text, text)
    result = ImageResult(None, "", encoded=encoded)
    assert result.passthrough(fmt.lower()) == (text, text) and result.passthrough("avif") is None
    assert len(result) == 2 and result.images.shape == (2, 4, 4, 3)  # decoded on demand


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"data": []}',
        b'{"data": [{"url": "https://x/y.png"}]}',
        b'{"data": [{"b64_json": "%%%%"}]}',
        b'{"data": [{"b64_json": "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ="}]}',  # base64, not an image
        orjson.dumps({"data": [{"b64_json": _b64("PNG")}, {"b64_json": _b64("JPEG")}]}),
    ],
)
def test_a_hosted_answer_that_is_not_images_is_a_backend_error(body: bytes) -> None:
    with pytest.raises(errors.BackendError, match="not understood"):
        parse_images(body)


def test_a_hosted_image_that_does_not_decode_fails_when_its_pixels_are_needed() -> None:
    ihdr = b"IHDR" + (64).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    header = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    broken = base64.b64encode(header + b"\0" * 40).decode()  # a size to bound, then no image
    result = ImageResult(None, "", encoded=parse_images(orjson.dumps({"data": [{"b64_json": broken}]})))
    assert result.passthrough("png") == (broken,)  # passed through as the upstream sent it
    assert result.dimensions() == (64, 64)
    with pytest.raises(errors.BackendError, match="not understood"):
        _ = result.images


def test_a_hosted_image_whose_size_cannot_be_read_is_refused_when_it_arrives() -> None:
    """Its pixel bound cannot be checked, so it is not passed on (nor decoded later)."""
    unreadable = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()
    with pytest.raises(errors.BackendError, match="size cannot be read"):
        parse_images(orjson.dumps({"data": [{"b64_json": unreadable}]}))


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (ConnectionRefusedError(), True),
        (StaleConnection("closed before a response"), True),
        (InferenceServerException("Exceeds maximum queue size", status="503"), True),
        (InferenceServerException("Request timeout expired", status="503"), False),
        (ConnectionResetError("mid-response"), False),
        (InferenceServerException("PROMPT: empty", status="400"), False),
        (InferenceServerException("internal", status="500"), False),
    ],
)
def test_only_what_cannot_have_been_processed_is_retryable(exc: BaseException, retryable: bool) -> None:
    assert map_triton_error(exc).retryable is retryable
