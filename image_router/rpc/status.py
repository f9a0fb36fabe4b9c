"""Gateway errors as gRPC status codes.

Every :class:`~image_router.errors.RouterError` has an HTTP status; gRPC clients get the code
that means the same (the mapping of grpc-gateway and Envoy's gRPC-JSON transcoder, read
in reverse), the error's message, and its stable snake_case code in the trailing
metadata ``x-router-error-code``. An overload refusal also carries its retry delay, as
``grpc-retry-pushback-ms`` (gRPC's own retry throttling reads it) and ``retry-after``
(seconds, as the HTTP header). Nothing else ever reaches a client: an unexpected
exception is logged and answered ``INTERNAL: internal error``.
"""

from __future__ import annotations

import grpc

from image_router.errors import Overloaded, RateLimited, RouterError

__all__ = ["grpc_status", "trailing_metadata"]

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(exc: RouterError) -> grpc.StatusCode:
    code = _CODES.get(exc.status)
    if code is None:
        code = grpc.StatusCode.INVALID_ARGUMENT if exc.status < 500 else grpc.StatusCode.INTERNAL
    return code


def trailing_metadata(exc: RouterError) -> tuple[tuple[str, str], ...]:
    metadata: list[tuple[str, str]] = [("x-router-error-code", exc.code)]
    if "route" in exc.details:
        metadata.append(("x-router-route", str(exc.details["route"])))
    if isinstance(exc, Overloaded | RateLimited):
        metadata.append(("grpc-retry-pushback-ms", str(exc.retry_after_s * 1000)))
        metadata.append(("retry-after", str(exc.retry_after_s)))
    if isinstance(exc, RateLimited):
        metadata.extend(exc.headers.items())
    return tuple(metadata)
