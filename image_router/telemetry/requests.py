"""One finished request, recorded the same way whichever front door it came through.

The HTTP middleware and the gRPC edge both end a request with :meth:`Recorder.finish`:
the request counter and latency histogram, the cache result, and one access-log line.
Both describe what served the request with the same tags (``route``, ``model``,
``fallback``, ``cache``…, the ``X-Router-*`` names without their prefix) and an HTTP
status (a gRPC error is counted under the status of the gateway error it carries), so
a dashboard reads one series for every protocol, split by ``api``.
"""

from __future__ import annotations

import time
from typing import Any

from image_router.errors import RouterError
from image_router.inference import served_tags
from image_router.served import Served
from image_router.telemetry.access_log import AccessLog
from image_router.telemetry.metrics import Metrics

__all__ = ["TAG_NAMES", "Recorder", "outcome", "outcome_tags"]

# response tag (header or gRPC metadata key, lower case) -> its name in metrics and logs
TAG_NAMES = {
    "x-router-route": "route",
    "x-router-model": "model",
    "x-router-attempts": "attempts",
    "x-router-canary": "canary",
    "x-router-fallback": "fallback",
    "x-router-hedged": "hedged",
    "x-cache": "cache",
    "x-router-tenant": "tenant",
    "x-router-usage": "usage",  # images, compute-ms, cost, currency: a billing export from logs
}


def outcome_tags(served: Served | None, error: BaseException | None) -> dict[str, str]:
    """What served a request (by the names metrics and logs use) — the same for every
    edge: from the gateway's answer, or the route and attempts its error carries."""
    if served is not None:
        return {TAG_NAMES[k.lower()]: v for k, v in served_tags(served).items() if k.lower() in TAG_NAMES}
    if isinstance(error, RouterError) and "route" in error.details:
        tags = {"route": str(error.details["route"])}
        if "attempts" in error.details:
            tags["attempts"] = str(error.details["attempts"])
        return tags
    return {}


def outcome(status: int, tags: dict[str, str]) -> str:
    if status < 300:
        return "downgraded" if "fallback" in tags else "ok"
    if status == 429:
        return "refused"
    if status == 504:
        return "budget_exhausted"
    return "client_error" if status < 500 else "failed"


class Recorder:
    def __init__(self, metrics: Metrics | None, access_log: AccessLog | None) -> None:
        self.metrics = metrics
        self.access_log = access_log

    @property
    def on(self) -> bool:
        return self.metrics is not None or self.access_log is not None

    def finish(self, api: str, status: int, tags: dict[str, str], elapsed_s: float, fields: dict[str, Any]) -> None:
        """``fields``: what the access-log line says of the request itself (its id,
        method and path, or gRPC method)."""
        if self.metrics is not None:
            route, model = tags.get("route", ""), tags.get("model", "")
            self.metrics.observe_request(api, route, model, status, outcome(status, tags), elapsed_s)
            if "cache" in tags:
                self.metrics.cache_result(route, model, tags["cache"])
        if self.access_log is not None:
            self.access_log.record(
                {
                    "ts": round(time.time(), 3),
                    **fields,
                    "api": api,
                    "status": status,
                    "latency_ms": round(elapsed_s * 1000, 2),
                    **tags,
                }
            )
