"""One middleware for the per-request signals: server span, metrics, access log.

It wraps only the image APIs (health probes, ``/metrics`` and the admin pages are not
traffic). What served the request comes from the data plane: the handler leaves the
gateway's :class:`~router.dispatch.Served` (or the error) in the request's state, and
the same tags the gRPC edge records are made from it (:mod:`router.telemetry.requests`);
only the status is read from the response. With tracing
off no span is created; with metrics, access log and tracing all off the app does not
install this middleware at all.

Every line here runs once per request, so it is written for cost (measured by
``bench/observability_overhead.py``): the span is started and ended directly instead
of through ``start_as_current_span``'s generator-based context manager, its closing
attributes are set in one call, and the metric children are cached.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.inference import served_tags
from router.telemetry import AccessLog, Metrics, Tracing
from router.telemetry.requests import TAG_NAMES, Recorder

__all__ = ["ObserveMiddleware", "api_of", "tags_of"]

_TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")


def tags_of(state: dict[str, Any]) -> dict[str, str]:
    """What served the request (by the names metrics and logs use), from what the
    handler left in its state: the gateway's answer, or the route of its error."""
    served = state.get("served")
    if served is not None:
        return {TAG_NAMES[k.lower()]: v for k, v in served_tags(served).items() if k.lower() in TAG_NAMES}
    error = state.get("error")
    if error is not None and "route" in error.details:
        tags = {"route": str(error.details["route"])}
        if "attempts" in error.details:
            tags["attempts"] = str(error.details["attempts"])
        return tags
    return {}


def api_of(path: str) -> str | None:
    """Which image API a path belongs to (``None``: not image traffic)."""
    if path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations"):
        return "openai"
    if path == "/api/v1/generate":
        return "generate"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "kserve"
    return None


class ObserveMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics | None, tracing: Tracing, access_log: AccessLog | None = None
    ) -> None:
        self.app = app
        self.recorder = Recorder(metrics, access_log)
        self.tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = api_of(scope["path"]) if scope["type"] == "http" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500}

        async def observe_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        if self.tracer is None:
            await self.app(scope, receive, observe_send)
        else:
            await self._traced(api, scope, receive, observe_send, seen)
        elapsed = time.perf_counter() - start
        if self.recorder.on:
            fields = {
                "request_id": scope.get("state", {}).get("request_id", ""),
                "method": scope["method"],
                "path": scope["path"],
            }
            # what served it is known once the handler is done (a stream: at its end)
            tags = seen["tags"] if "tags" in seen else tags_of(scope.get("state", {}))
            self.recorder.finish(api, seen["status"], tags, elapsed, fields)

    async def _traced(self, api: str, scope: Scope, receive: Receive, send: Send, seen: dict[str, Any]) -> None:
        """The SERVER span, current while the request runs (attempt spans are its children)."""
        assert self.tracer is not None
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
        parent = propagate.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            f"{scope['method']} {api}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        )
        if not span.is_recording() and parent is None:
            # not sampled, and no trace context came in: nothing to record or pass on
            await self.app(scope, receive, send)
            return
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)
            tags = seen["tags"] = tags_of(scope.get("state", {}))
            attributes: dict[str, str | int] = {f"router.{key}": value for key, value in tags.items()}
            attributes["http.response.status_code"] = seen["status"]
            attributes["router.request_id"] = scope.get("state", {}).get("request_id", "")
            span.set_attributes(attributes)
            if seen["status"] >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
