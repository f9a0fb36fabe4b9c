"""Signals for operators: Prometheus metrics, OpenTelemetry traces, the access log.

A leaf package: the dispatcher and the HTTP edge call into it; it never calls back.
"""

from router.telemetry.access_log import AccessLog
from router.telemetry.metrics import Metrics
from router.telemetry.tracing import Tracing

__all__ = ["AccessLog", "Metrics", "Tracing"]
