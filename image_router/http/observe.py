"""The per-request signals of image traffic: server span, metrics, access log.

One :class:`Observer` records every image request: the image lane
(:class:`~image_router.http.lane.ImageLane`) calls it directly, and
:class:`ObserveMiddleware` puts it around the image requests Starlette routes (edits,
variations); health probes, ``/metrics`` and the admin pages are not traffic.

What served the request comes from the data plane: the handler leaves the gateway's
:class:`~image_router.dispatch.Served` (or the error) in the request's state, and the
same tags the gRPC edge records are made from it (:mod:`image_router.telemetry.requests`);
only the status is read from the response. With tracing off no span is created; with
metrics, access log and tracing all off the app does not observe at all.

Every line here runs once per request, so it is written for cost (measured by
``bench/observability_overhead.py``): the span is started and ended directly instead
of through ``start_as_current_span``'s generator-based context manager, its closing
attributes are set in one call, and the metric children are cached.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from image_router.http.errors import echo_header
from image_router.telemetry import AccessLog, Metrics, Tracing
from image_router.telemetry.requests import Recorder, outcome_tags
from image_router.telemetry.spans import end_server_span, start_server_span

__all__ = ["ObserveMiddleware", "Observer", "api_of", "tags_of"]

_TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")


def tags_of(state: dict[str, Any]) -> dict[str, str]:
    """What served the request, from what the handler left in its state."""
    return outcome_tags(state.get("served"), state.get("error"))


def api_of(path: str) -> str | None:
    """Which image API a path belongs to (``None``: not image traffic)."""
    if path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations"):
        return "openai"
    if path == "/api/v1/generate":
        return "generate"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "kserve"
    return None


class Observer:
    """The per-request signals of one image request, around the ASGI app that answers it."""

    def __init__(self, metrics: Metrics | None, tracing: Tracing, access_log: AccessLog | None = None) -> None:
        self.recorder = Recorder(metrics, access_log)
        self.tracer = tracing.tracer

    @property
    def on(self) -> bool:
        """Whether there is anything to record (else the app installs no observing)."""
        return self.recorder.on or self.tracer is not None

    async def observed(
        self,
        api: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        app: ASGIApp,
        header: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Run ``app`` for the request and record it as ``api`` traffic. ``header``: one
        more response header to send (the image lane's request id), so the lane wraps
        ``send`` once rather than once per concern."""
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500}

        async def observe_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                if header is not None:
                    echo_header(message, header)
            await send(message)

        try:
            if self.tracer is None:
                await app(scope, receive, observe_send)
            else:
                await self._traced(api, scope, receive, observe_send, seen, app)
        except Exception:  # escaped the app's handlers: still a request (a 500 if nothing was sent)
            self._record(api, scope, seen, time.perf_counter() - start)
            raise
        self._record(api, scope, seen, time.perf_counter() - start)

    def _record(self, api: str, scope: Scope, seen: dict[str, Any], elapsed: float) -> None:
        if self.recorder.on:
            fields = {
                "request_id": scope.get("state", {}).get("request_id", ""),
                "method": scope["method"],
                "path": scope["path"],
            }
            # what served it is known once the handler is done (a stream: at its end)
            tags = seen["tags"] if "tags" in seen else tags_of(scope.get("state", {}))
            self.recorder.finish(api, seen["status"], tags, elapsed, fields)

    async def _traced(
        self, api: str, scope: Scope, receive: Receive, send: Send, seen: dict[str, Any], app: ASGIApp
    ) -> None:
        """The SERVER span, current while the request runs (attempt spans are its children)."""
        assert self.tracer is not None
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        opened = start_server_span(self.tracer, f"{scope['method']} {api}", carrier, attributes)
        if opened is None:
            await app(scope, receive, send)
            return
        try:
            await app(scope, receive, send)
        finally:
            state = scope.get("state", {})
            tags = seen["tags"] = tags_of(state)
            extra: dict[str, str | int] = {"http.response.status_code": seen["status"]}
            extra["router.request_id"] = state.get("request_id", "")
            end_server_span(opened, seen["status"], tags, extra)


class ObserveMiddleware:
    """:class:`Observer` as a middleware, for the image requests that do not take the
    image lane (edits, variations: multipart bodies, routed by Starlette)."""

    def __init__(self, app: ASGIApp, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = api_of(scope["path"]) if scope["type"] == "http" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        await self.observer.observed(api, scope, receive, send, self.app)
