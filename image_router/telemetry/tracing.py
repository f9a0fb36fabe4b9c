"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` environment variables.

``OTEL_TRACES_EXPORTER`` is ``none`` by default (then no span is ever created: the
hot path checks one attribute), ``console``, or ``otlp`` (needs the optional
``opentelemetry-exporter-otlp-proto-http``; endpoint and headers from
``OTEL_EXPORTER_OTLP_*``). ``OTEL_SERVICE_NAME`` defaults to ``image-router``. W3C
``traceparent`` is read from requests and written to backend calls.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import Tracer

__all__ = ["Tracing"]

log = logging.getLogger("router.tracing")


class Tracing:
    """A tracer, or ``None`` when tracing is off."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.tracer: Tracer | None = provider.get_tracer("router") if provider is not None else None

    @classmethod
    def off(cls) -> Tracing:
        return cls(None)

    @classmethod
    def with_processor(
        cls, processor: SpanProcessor, service: str = "image-router", sampler: Sampler | None = None
    ) -> Tracing:
        """``sampler`` ``None``: the one ``OTEL_TRACES_SAMPLER`` names (parent-based always-on by default)."""
        provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
        provider.add_span_processor(processor)
        return cls(provider)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if env is None else env
        if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return cls.off()
        kind = env.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
        exporter: SpanExporter
        if kind in ("", "none"):
            return cls.off()
        if kind == "console":
            exporter = ConsoleSpanExporter()
        elif kind == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.error("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http; tracing is off")
                return cls.off()
            exporter = OTLPSpanExporter()
        else:
            log.error("unknown OTEL_TRACES_EXPORTER %r; tracing is off", kind)
            return cls.off()
        return cls.with_processor(BatchSpanProcessor(exporter), env.get("OTEL_SERVICE_NAME", "image-router"))

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
