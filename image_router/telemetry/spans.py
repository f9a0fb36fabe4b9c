"""The SERVER span of one request, opened and closed the same way for every edge.

HTTP (:mod:`image_router.http.observe`) and gRPC (:mod:`image_router.rpc.service`) each once started,
attached, tagged and ended their own span; here is the one copy. Started and ended by
hand rather than through ``start_as_current_span``: its generator-based context manager
costs more per request, and the span must be current while the request runs so that
attempt spans are its children and the backend's ``traceparent`` carries it.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

__all__ = ["ServerSpan", "end_server_span", "start_server_span"]

ServerSpan = tuple[trace.Span, object]  # the span, and the context token that made it current


def start_server_span(
    tracer: Tracer, name: str, carrier: Mapping[str, str], attributes: dict[str, str]
) -> ServerSpan | None:
    """The SERVER span, made current, continuing the client's trace context (``carrier``:
    its ``traceparent``/``tracestate``/``baggage``); ``None`` when it is not sampled and
    no context came in — nothing to record or to pass on."""
    parent = propagate.extract(carrier) if carrier else None
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    if not span.is_recording() and parent is None:
        return None
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def end_server_span(opened: ServerSpan, status: int, tags: Mapping[str, str], extra: dict[str, str | int]) -> None:
    """Detach and end the span with what served the request (``router.<tag>``), its
    status (an HTTP status; gRPC's mapped one) and ``extra`` attributes."""
    span, token = opened
    otel_context.detach(token)  # type: ignore[arg-type]
    attributes: dict[str, str | int] = {f"router.{key}": value for key, value in tags.items()}
    attributes.update(extra)
    span.set_attributes(attributes)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
