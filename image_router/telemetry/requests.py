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

# response tag, as :func:`~image_router.inference.served_tags` spells it (an HTTP header;
# gRPC metadata in lower case) -> its name in metrics and logs; read as spelled, so a
# request's tags are not lower-cased one by one
TAG_NAMES = {
    "X-Router-Route": "route",
    "X-Router-Model": "model",
    "X-Router-Attempts": "attempts",
    "X-Router-Canary": "canary",
    "X-Router-Fallback": "fallback",
    "X-Router-Hedged": "hedged",
    "X-Cache": "cache",
    "X-Router-Tenant": "tenant",
    "X-Router-Usage": "usage",  # images, compute-ms, cost, currency: a billing export from logs
}


def outcome_tags(served: Served | None, error: BaseException | None) -> dict[str, str]:
    """What served a request (by the names metrics and logs use) — the same for every
    edge: from the gateway's answer, or the route and attempts its error carries."""
    if served is not None:
        tags = served_tags(served)
        return {TAG_NAMES[k]: v for k, v in tags.items() if k in TAG_NAMES}
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
