"""One middleware for the per-request signals: server span, metrics, access log.

It wraps only the image APIs (health probes, ``/metrics`` and the admin pages are not
traffic). What served the request is read back from the ``X-Router-*`` tags the
handlers already set, so routing code knows nothing about observability. With tracing
off no span is created; the access log is one JSON line on the ``router.access``
logger.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.telemetry import Metrics, Tracing

__all__ = ["ObserveMiddleware", "api_of"]

access = logging.getLogger("router.access")

_TAGS = {
    b"x-router-route": "route",
    b"x-router-model": "model",
    b"x-router-attempts": "attempts",
    b"x-router-canary": "canary",
    b"x-router-fallback": "fallback",
    b"x-router-hedged": "hedged",
}


_TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")


def api_of(path: str) -> str | None:
    """Which image API a path belongs to (``None``: not image traffic)."""
    if path == "/v1/images/generations":
        return "openai"
    if path == "/api/v1/generate":
        return "generate"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "kserve"
    return None


def _outcome(status: int, tags: dict[str, str]) -> str:
    if status < 300:
        return "downgraded" if "fallback" in tags else "ok"
    if status == 429:
        return "refused"
    if status == 504:
        return "budget_exhausted"
    return "client_error" if status < 500 else "failed"


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, tracing: Tracing, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracing.tracer
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = api_of(scope["path"]) if scope["type"] == "http" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "tags": {}}

        async def observe_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["tags"] = {_TAGS[k]: v.decode("latin-1") for k, v in message.get("headers", []) if k in _TAGS}
            await send(message)

        if self.tracer is None:
            await self.app(scope, receive, observe_send)
        else:
            carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
            with self.tracer.start_as_current_span(
                f"{scope['method']} {api}",
                context=propagate.extract(carrier) if carrier else None,
                record_exception=False,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": scope["method"], "url.path": scope["path"], "router.api": api},
            ) as span:
                await self.app(scope, receive, observe_send)
                span.set_attribute("http.response.status_code", seen["status"])
                span.set_attribute("router.request_id", scope.get("state", {}).get("request_id", ""))
                for key, value in seen["tags"].items():
                    span.set_attribute(f"router.{key}", value)
                if seen["status"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
        elapsed = time.perf_counter() - start
        status, tags = seen["status"], seen["tags"]
        route, model = tags.get("route", ""), tags.get("model", "")
        self.metrics.requests.labels(api, route, model, str(status)).inc()
        self.metrics.latency.labels(api, route, model, _outcome(status, tags)).observe(elapsed)
        if self.access_log:
            access.info(
                json.dumps(
                    {
                        "ts": round(time.time(), 3),
                        "request_id": scope.get("state", {}).get("request_id", ""),
                        "method": scope["method"],
                        "path": scope["path"],
                        "api": api,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 2),
                        **tags,
                    },
                    separators=(",", ":"),
                )
            )
