"""The gateway's own logs and uvicorn's, as text for a terminal or as JSON lines.

``router serve --log-format json`` (or ``ROUTER_LOG_FORMAT=json``) writes every log
record — the gateway's and the server's — as one JSON object per line on stderr,
``{"ts", "level", "logger", "message"}`` plus ``request_id`` and ``trace_id`` when the
record was made while serving a request, and ``exception`` with the traceback when
there is one: what a log collector parses without a grok pattern. ``ts`` is epoch
seconds, as in the access log's lines, so one parser reads both. The default, ``text``,
stays what a person reads in a terminal.

Which request a record belongs to is found when it is formatted, not passed along:
:class:`RequestContext` (the outermost ASGI layer) puts each request's ASGI ``state``
in a context variable, and :class:`RequestFilter` reads the request id from it —
:func:`~image_router.http.errors.assign_request_id` writes it there further in (the image
lane, or ``RequestIdMiddleware`` for other requests),
so the id a record carries is exactly the one the response's ``X-Request-Id`` shows.
Tasks the request starts inherit the variable. The trace id is the current
OpenTelemetry span's, when one is recording (tracing on, :mod:`image_router.telemetry.tracing`).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
from opentelemetry import trace

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "JsonFormatter",
    "RequestContext",
    "RequestFilter",
    "configure",
    "default_format",
    "uvicorn_log_config",
]

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "ROUTER_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

_request_state: ContextVar[MutableMapping[str, Any] | None] = ContextVar("router_request_state", default=None)


def default_format() -> str:
    """``ROUTER_LOG_FORMAT`` when it names a format, else ``text``."""
    value = os.environ.get(LOG_FORMAT_ENV, "").strip().lower()
    return value if value in LOG_FORMATS else "text"


class RequestContext:
    """Outermost ASGI layer: the request's ``state`` is current while it is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _request_state.set(scope.setdefault("state", {}))  # the dict the inner layers write into
        try:
            await self.app(scope, receive, send)
        finally:
            _request_state.reset(token)


class RequestFilter(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to a record made while serving a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        state = _request_state.get()
        request_id = state.get("request_id") if state is not None else None
        if request_id:
            record.request_id = request_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id"):
            value = getattr(record, key, None)
            if value:
                line[key] = value
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line).decode()


def configure(fmt: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every record to ``stream`` (stderr) in ``fmt``. As :func:`logging.basicConfig`,
    nothing is changed when the root logger already has a handler that is not one of
    these (a program that embeds the command, a test harness): it chose already."""
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # a line per file event otherwise
    root = logging.getLogger()
    if any(not isinstance(h, _Handler) for h in root.handlers):
        return
    handler = _Handler(stream or sys.stderr)
    handler.addFilter(RequestFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure` installs, told apart from anyone else's."""


def uvicorn_log_config(fmt: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: for JSON ``None``, so that it installs no handler of
    its own and its records reach :func:`configure`'s (``log_level`` still sets its
    loggers' levels); for text its own configuration, which a terminal knows already."""
    if fmt == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
