"""One error tree: stable codes, and every foreign exception mapped at the boundary."""

from __future__ import annotations

import aiohttp
import httpx
import pytest
from tritonclient.utils import InferenceServerException

import router.errors as errors
from router.backends._http1 import StaleConnection
from router.backends.openai import map_httpx_error
from router.backends.triton import map_triton_error


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


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout("t"), errors.BackendTimeout),
        (httpx.ReadTimeout("t"), errors.BackendTimeout),
        (httpx.ConnectError("refused"), errors.BackendUnavailable),
        (httpx.RemoteProtocolError("bad"), errors.BackendUnavailable),
        (httpx.DecodingError("d"), errors.BackendError),
    ],
)
def test_httpx_failures_are_mapped(exc: BaseException, expected: type[errors.RouterError]) -> None:
    assert type(map_httpx_error(exc)) is expected


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
