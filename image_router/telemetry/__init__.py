"""Signals for operators: Prometheus metrics, OpenTelemetry traces, the access log.

A leaf package: the dispatcher and the HTTP edge call into it; it never calls back.
"""

from image_router.telemetry.access_log import AccessLog
from image_router.telemetry.metrics import Metrics
from image_router.telemetry.tracing import Tracing

__all__ = ["AccessLog", "Metrics", "Tracing"]
