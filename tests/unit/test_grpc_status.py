"""Gateway errors as gRPC status codes (image_router/rpc/status.py; README "errors are status
codes"): every class of the error tree maps to the code that means its HTTP status, the
stable code travels in ``x-router-error-code``, and the two refusals that say when to come
back (429 ``overloaded`` and ``rate_limited``) carry ``grpc-retry-pushback-ms`` and
``retry-after``; ``rate_limited`` also its ``x-ratelimit-*`` trailers."""

from __future__ import annotations

import grpc
import pytest

from image_router import errors
from image_router.errors import ConfigError, ConfigIssue, Overloaded, RateLimited, RouterError
from image_router.rpc.status import grpc_status, trailing_metadata

Code = grpc.StatusCode

# The README's list, and what an HTTP status means in gRPC (grpc-gateway's table read
# backwards): per HTTP status, not per class, so a new class of the tree is checked too.
BY_STATUS = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    409: Code.ABORTED,
    413: Code.RESOURCE_EXHAUSTED,
    415: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
    499: Code.CANCELLED,
    500: Code.INTERNAL,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
# The classes a client meets most, named so a change of their status shows here too.
NAMED = {
    "InvalidRequest": Code.INVALID_ARGUMENT,
    "Unauthorized": Code.UNAUTHENTICATED,
    "Forbidden": Code.PERMISSION_DENIED,
    "UnknownModel": Code.NOT_FOUND,
    "ImageNotFound": Code.NOT_FOUND,
    "Overloaded": Code.RESOURCE_EXHAUSTED,
    "RateLimited": Code.RESOURCE_EXHAUSTED,
    "BackendRejected": Code.INVALID_ARGUMENT,
    "BackendUnavailable": Code.UNAVAILABLE,
    "AllTiersFailed": Code.UNAVAILABLE,
    "StoreUnavailable": Code.UNAVAILABLE,
    "BackendTimeout": Code.DEADLINE_EXCEEDED,
    "BudgetExhausted": Code.DEADLINE_EXCEEDED,
    "ClientGone": Code.CANCELLED,
    "RouterError": Code.INTERNAL,
}


def _tree(cls: type[RouterError]) -> list[type[RouterError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _tree(child))]


def _instance(cls: type[RouterError]) -> RouterError:
    if issubclass(cls, ConfigError):
        return cls([ConfigIssue("routes.yaml", 1, 1, "routes", "bad")])
    return cls("message")


ERROR_CLASSES = [cls for cls in _tree(RouterError) if cls.__module__ == errors.__name__]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_maps_to_the_code_of_its_http_status(cls: type[RouterError]) -> None:
    exc = _instance(cls)
    assert exc.status in BY_STATUS, f"{cls.__name__}: HTTP {exc.status} has no gRPC code in this table"
    assert grpc_status(exc) == BY_STATUS[exc.status]
    if cls.__name__ in NAMED:
        assert grpc_status(exc) == NAMED[cls.__name__]
    metadata = dict(trailing_metadata(exc))
    assert metadata["x-router-error-code"] == exc.code
    if not isinstance(exc, Overloaded | RateLimited):
        assert "grpc-retry-pushback-ms" not in metadata and "retry-after" not in metadata


def test_the_named_classes_are_all_in_the_tree() -> None:
    assert set(NAMED) <= {cls.__name__ for cls in ERROR_CLASSES}


def test_an_unknown_status_is_internal_for_5xx_and_invalid_argument_below() -> None:
    teapot, broken = RouterError("x"), RouterError("y")
    teapot.status, broken.status = 418, 507  # type: ignore[misc]
    assert grpc_status(teapot) == Code.INVALID_ARGUMENT
    assert grpc_status(broken) == Code.INTERNAL


def test_an_overload_refusal_carries_its_pushback_and_route() -> None:
    metadata = dict(trailing_metadata(Overloaded("shed", retry_after_s=3, route="hq")))
    assert metadata == {
        "x-router-error-code": "overloaded",
        "x-router-route": "hq",
        "grpc-retry-pushback-ms": "3000",
        "retry-after": "3",
    }


def test_a_rate_limited_tenant_gets_pushback_and_its_x_ratelimit_trailers() -> None:
    limits = {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "0",
              "x-ratelimit-reset-requests": "2s"}  # fmt: skip
    metadata = trailing_metadata(RateLimited("over", retry_after_s=2, headers=limits))
    assert metadata == (
        ("x-router-error-code", "rate_limited"),
        ("grpc-retry-pushback-ms", "2000"),
        ("retry-after", "2"),
        *limits.items(),
    )
