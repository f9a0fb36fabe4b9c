"""Request ids and the one place errors become HTTP responses.

Every response carries ``X-Request-Id`` (the client's, when it sent a sane one).
Errors render as ``{"error": {"code", "message", "type", "request_id", ...}}`` —
the shape the OpenAI SDK also understands. On the KServe ``/v2`` paths the body is
Triton's own shape, ``{"error": "<message>", "code": ..., "request_id": ...}``,
because unmodified Triton clients read ``error`` as a string. Anything not a
:class:`~image_router.errors.RouterError` is logged with its traceback and answered as a
plain 500: no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
import re
from random import getrandbits  # seeded from the OS, and again in a forked worker
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from image_router.errors import MethodNotAllowed, NotFound, Overloaded, RateLimited, RouterError

__all__ = [
    "RequestIdMiddleware",
    "assign_request_id",
    "echo_header",
    "error_response",
    "exception_handlers",
    "request_id",
    "respond_to",
]

log = logging.getLogger("router.http")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def assign_request_id(scope: Scope) -> tuple[bytes, bytes]:
    """Give an HTTP request its id in ``scope["state"]["request_id"]`` — the client's
    ``X-Request-Id`` when it is sane, else a fresh one — and return the response
    header that echoes it (the image lane adds it in its own single ``send``)."""
    rid = None
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            rid = candidate if _SANE_ID.match(candidate) else None
            break
    # uuid4's shape, no object and no system call: unique, not secret (a client may send
    # its own id, so nothing trusts one); the module's generator, reseeded in a fork
    rid = rid or f"{getrandbits(128):032x}"
    scope.setdefault("state", {})["request_id"] = rid
    return (b"x-request-id", rid.encode())


def echo_header(message: Message, header: tuple[bytes, bytes]) -> None:
    """Add ``header`` to ``message`` when it starts the response (the request id's echo)."""
    if message["type"] == "http.response.start":
        message["headers"] = [*message.get("headers", []), header]


class RequestIdMiddleware:
    """Assign ``scope["state"]["request_id"]`` and echo it as ``X-Request-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = assign_request_id(scope)

        async def send_with_id(message: Message) -> None:
            echo_header(message, header)
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(request: Request, exc: RouterError, headers: dict[str, str] | None = None) -> Response:
    """The JSON error; a refusal that got as far as a route is tagged with it, too."""
    rid = request_id(request)
    request.state.error = exc  # what the observability middleware records
    headers = dict(headers or {})
    if "route" in exc.details:
        headers["X-Router-Route"] = str(exc.details["route"])
    if "attempts" in exc.details:
        headers["X-Router-Attempts"] = str(exc.details["attempts"])
    if request.url.path.startswith("/v2"):
        body: dict[str, Any] = {"error": exc.message, "code": exc.code, "request_id": rid}
    else:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        # OpenAI's shape: `param` names the offending field (the SDK's BadRequestError.param)
        body = {"error": {**exc.to_dict(), "type": kind, "param": exc.details.get("field"), "request_id": rid}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _router_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouterError)
    if isinstance(exc, Overloaded):
        return error_response(request, exc, {"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, RateLimited):
        return error_response(request, exc, {**exc.headers, "Retry-After": str(exc.retry_after_s)})
    return error_response(request, exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(request, MethodNotAllowed(f"{request.method} is not allowed here"))
    if exc.status_code == 404:
        return error_response(request, NotFound(f"no such endpoint: {request.url.path}"))
    mapped = RouterError(str(exc.detail))
    mapped.status = exc.status_code  # type: ignore[misc]
    return error_response(request, mapped)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, RouterError("internal error"))


exception_handlers: dict[Any, Any] = {
    RouterError: _router_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}


async def respond_to(request: Request, exc: Exception) -> Response:
    """The answer to ``exc`` from the handler Starlette would pick (the nearest class in
    its MRO), for code that calls a handler below Starlette's own exception layers."""
    for cls in type(exc).__mro__:
        handler = exception_handlers.get(cls)
        if handler is not None:
            response: Response = await handler(request, exc)
            return response
    raise exc  # pragma: no cover - Exception itself has a handler
