"""The protocol-agnostic data plane: route, pick an arm, dispatch.

Every front end (OpenAI Images, the JSON API, KServe v2) turns its request into
:class:`~router.policy.match.RequestFacts` plus an
:class:`~router.backends.base.ImageRequest` and calls :meth:`Gateway.generate`, so the
three protocols cannot drift apart in routing behaviour.

The active table is one reference, replaced whole by :meth:`Gateway.swap`; a request
reads it once on arrival and finishes on that table even if a reload happens.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from router.backends import ImageBackend, ImageRequest, make_backend
from router.backends.pool import BackendPool
from router.config.table import Backend, Route, RoutingTable
from router.dispatch import Dispatcher, Served
from router.errors import InvalidRequest
from router.policy.explain import explain
from router.policy.match import RequestFacts, select_route
from router.policy.split import choose_arm, sticky_key
from router.stats import LatencyStats
from router.telemetry import Metrics, Tracing

__all__ = ["Gateway"]


def _check_limits(route: Route, request: ImageRequest) -> None:
    limits = route.limits
    if len(request.prompts) > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n} on route {route.name!r}", field="n")
    if limits.max_steps is not None and request.steps is not None and request.steps > limits.max_steps:
        raise InvalidRequest(f"steps must be at most {limits.max_steps}", field="steps")
    if limits.max_side is not None:
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value > limits.max_side:
                raise InvalidRequest(f"{name} must be at most {limits.max_side}", field=name)


class Gateway:
    def __init__(
        self,
        table: RoutingTable,
        *,
        backend_factory: Callable[[Backend], ImageBackend] = make_backend,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics
        self.stats = LatencyStats(clock)
        self.pool = BackendPool(backend_factory)
        self.dispatcher = Dispatcher(self.pool, self.stats, clock, metrics=metrics, tracing=tracing)
        self._table = table
        self.pool.sync(table.backends)

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap(self, table: RoutingTable) -> None:
        """Make ``table`` active; requests already running keep theirs."""
        self.pool.sync(table.backends)
        self._table = table

    async def generate(
        self,
        facts: RequestFacts,
        request: ImageRequest,
        *,
        query: Mapping[str, str] | None = None,
        canary: str | None = None,
        priority: int | None = None,
        started: float | None = None,
    ) -> Served:
        table = self._table
        route = select_route(table, facts)
        _check_limits(route, request)
        key = sticky_key(route, facts.headers, query or {}, facts.fields)
        choice = choose_arm(route, key, self.rng, canary)
        if self.metrics is not None and route.is_split:
            self.metrics.canary.labels(route.name, choice.arm.model, "true" if choice.arm.canary else "false").inc()
        return await self.dispatcher.serve(table, route, choice, request, priority or route.priority, started=started)

    def explain(self, facts: RequestFacts, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What the active table would do with ``facts``, with live forecasts (no backend call)."""
        table = self._table

        def forecast_s(name: str) -> float | None:
            forecast = self.dispatcher.forecast(table.models[name])
            return None if forecast is None else forecast.expected_s

        return explain(table, facts, forecast_s, query)

    def backend_snapshots(self) -> dict[str, list[dict[str, Any]]]:
        return {name: backend.snapshot() for name, backend in self.pool.items()}

    def state(self) -> dict[str, Any]:
        """What the metrics collector and the status page read (no I/O)."""
        return {
            "models": self.dispatcher.snapshot(),
            "backends": self.backend_snapshots(),
            "retries": {name: getattr(b, "retries", 0) for name, b in self.pool.items()},
            "digest": self._table.digest,
        }

    async def ready(self) -> bool:
        """Ready when at least one configured backend answers ready."""
        for _, backend in self.pool.items():
            if await backend.ready():
                return True
        return False

    async def aclose(self) -> None:
        await self.pool.aclose()
